"""The ONE owner of the bundle format (torch-free): names, version, keys, entry builders, schema checks.

A bundle is a directory with `manifest.json` beside the files it lists (docs/bundle-format.md).
The writer (`export/manifest.py`, `export/exporter.py`), the engine builder (`export/engine.py`)
and the reader (`runtime/bundle.py`) all take the format's facts from here, and so does the C++
reader's documentation: change the format here (and bump FORMAT_VERSION on an incompatible change).
It also owns the constants the format records, so that the model, the similarity and the
preprocessing cannot drift from what a manifest says.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from .files import sha256_file

# ------------------------------------------------------------------------------ names and version
FORMAT_NAME = "ts2net-bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)
MANIFEST_NAME = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.npz"
VALIDATION_FILE = "validation.md"
GRAPHS = ("text", "video")
# Precisions that have graph files. bf16 has none: it is an OpenVINO inference hint on the fp32 graph.
PRECISIONS = ("fp32", "fp16", "int8")
#: The graphs every export writes and validates first (FP32 must pass for the bundle to be valid);
#: the INT8 graphs come after, and only if they pass their own gates (export/int8.py).
CORE_PRECISIONS = ("fp32", "fp16")
#: Keys of the manifest's "parity" section beyond the graph precisions: the bf16 row, the INT8
#: OpenVINO IR row and the real-data gate outcomes recorded by `ts2net parity --csv --videos`.
PARITY_BF16, PARITY_INT8_OPENVINO, PARITY_REAL_DATA = "bf16", "int8_openvino", "real_data"
DTYPES = ("float32", "float16", "int64", "int32", "bool")

# Sections the runtime reads; an exporter that leaves one out wrote a bundle we cannot serve.
REQUIRED_SECTIONS = {"model": dict, "preprocessing": dict, "tokenizer": dict, "similarity": dict, "graphs": dict}
REQUIRED_MODEL_KEYS = ("image_size", "max_frames", "max_words", "embed_dim", "top_k")
REQUIRED_SIMILARITY_KEYS = ("logit_scale", "frame_mask_mode", "tokens_per_frame", "frame_softmax_factor")
ENGINE_KEYS = ("file", "sha256", "precision", "tensorrt_version", "gpu", "profile")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# ------------------------------------------------------------------------------ recorded constants
#: Value written into masked frames before the frame softmax (the official ``masked_fill(-1e18)``);
#: any finite value far below ``-softmax_factor`` gives an exact zero weight after ``exp``.
MASKED_FRAME_VALUE = -1e18
#: Accepted values of ``frame_mask_mode``. "official" reproduces the mask quirk of the released
#: TS2-Net code (its checkpoints were trained and evaluated with it); "fixed" uses the mask as given
#: (docs/semantics.md).
FRAME_MASK_MODES = ("official", "fixed")
#: CLIP's pixel normalisation (after scaling to [0, 1]), RGB order.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def graph_file(graph: str, precision: str) -> str:
    """File name of an ONNX graph in a bundle: text.onnx, video.fp16.onnx, ..."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


def openvino_ir_files(graph: str, precision: str = "int8") -> tuple[str, str]:
    """File names of a graph's OpenVINO IR (model, weights) in a bundle: video.int8.xml, video.int8.bin."""
    return f"{graph}.{precision}.xml", f"{graph}.{precision}.bin"


def engine_file(graph: str) -> str:
    """File name of a TensorRT engine in a bundle: text.plan, video.plan."""
    return f"{graph}.plan"


# ------------------------------------------------------------------------------ entry builders
def file_entry(bundle: Path, name: str, **extra: Any) -> dict[str, Any]:
    """A manifest entry for a file inside the bundle: its name, sha256, size and any extra fields."""
    return {"file": name, "sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size, **extra}


def preprocessing_facts(cfg: Any) -> dict[str, Any]:
    """The `preprocessing` section of a model config (any object with image_size and max_frames)."""
    return {
        "image_size": cfg.image_size,
        "resize": "bicubic; short side -> image_size, long side -> int(image_size * long / short)",
        "crop": "center image_size x image_size, offset int((dim - image_size + 1) * 0.5) (rounded half up)",
        "scale": 1 / 255,
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
        "color": "RGB",
        "sampling": {"frames_per_second": 1, "fps_rule": "int(container fps)",
                     "frame_numbers": "int(s * fps) for s in 0..ceil(frame_count / fps) - 1"},
        "frame_slicing": "if more than max_frames samples: linspace(0, n - 1, max_frames).astype(int)",
        "max_frames": cfg.max_frames,
        "padding": "zero frames (normalized space) at the end, frame_mask 0",
    }


def similarity_facts(cfg: Any, logit_scale: float) -> dict[str, Any]:
    """The `similarity` section: the constants `runtime.similarity` needs, from a model config."""
    return {"logit_scale": logit_scale, "logit_scale_is_exponentiated": True,
            "frame_softmax_factor": cfg.frame_softmax_factor, "frame_mask_mode": cfg.frame_mask_mode,
            "tokens_per_frame": cfg.tokens_per_frame, "masked_frame_value": MASKED_FRAME_VALUE,
            "formula": "docs/bundle-format.md#similarity"}


# ------------------------------------------------------------------------------ schema check
def _check_file_entry(where: str, entry: Any, problems: list[str]) -> None:
    """`entry` must name a file inside the bundle and carry its sha256."""
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: expected an object with 'file' and 'sha256', got {type(entry).__name__}")
        return
    name = entry.get("file")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.file: missing or not a string")
    elif Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        # a manifest must not point outside its own directory (a copied bundle would silently use other files)
        problems.append(f"{where}.file: {name!r} must be a plain relative path inside the bundle")
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        problems.append(f"{where}.sha256: missing or not 64 lowercase hex digits")


def _check_tensor_list(where: str, tensors: Any, problems: list[str]) -> None:
    if not isinstance(tensors, list) or not tensors:
        problems.append(f"{where}: expected a non-empty list of tensors")
        return
    for i, tensor in enumerate(tensors):
        label = f"{where}[{i}]"
        if not isinstance(tensor, Mapping):
            problems.append(f"{label}: expected an object with name, dtype, shape")
            continue
        if not isinstance(tensor.get("name"), str) or not tensor["name"]:
            problems.append(f"{label}.name: missing")
        if tensor.get("dtype") not in DTYPES:
            problems.append(f"{label}.dtype: {tensor.get('dtype')!r} is not one of {list(DTYPES)}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d)
                for d in shape):
            problems.append(f"{label}.shape: {shape!r} must be a list of positive ints and named dynamic axes")


def schema_problems(manifest: Any) -> list[str]:
    """Every problem of a manifest's structure (empty: usable). Values are not cross-checked with files."""
    if not isinstance(manifest, Mapping):
        return [f"the manifest is a JSON {type(manifest).__name__}, expected an object"]
    problems: list[str] = []
    if manifest.get("format") != FORMAT_NAME:
        problems.append(f"format: {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        problems.append(f"format_version: {version!r} is not supported by this runtime (supported: "
                        f"{list(SUPPORTED_FORMAT_VERSIONS)}); use a runtime matching the exporter's version")
    for section, kind in REQUIRED_SECTIONS.items():
        if not isinstance(manifest.get(section), kind):
            problems.append(f"{section}: required section missing or not an object")
    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    for key in REQUIRED_MODEL_KEYS:
        if model and not isinstance(model.get(key), int):
            problems.append(f"model.{key}: missing or not an integer")
    sim = manifest.get("similarity") if isinstance(manifest.get("similarity"), Mapping) else {}
    for key in REQUIRED_SIMILARITY_KEYS:
        if sim and key not in sim:
            problems.append(f"similarity.{key}: missing")
    if isinstance(manifest.get("tokenizer"), Mapping):
        _check_file_entry("tokenizer", manifest["tokenizer"], problems)
    graphs = manifest.get("graphs") if isinstance(manifest.get("graphs"), Mapping) else None
    if graphs is not None:
        for graph in GRAPHS:
            if not isinstance(graphs.get(graph), Mapping) or "fp32" not in graphs[graph]:
                problems.append(f"graphs.{graph}: missing (every bundle has FP32 text and video graphs)")
        for graph, precisions in graphs.items():
            if not isinstance(precisions, Mapping):
                problems.append(f"graphs.{graph}: expected an object keyed by precision")
                continue
            for precision, entry in precisions.items():
                where = f"graphs.{graph}.{precision}"
                if precision not in PRECISIONS:
                    problems.append(f"{where}: unknown precision (expected one of {list(PRECISIONS)})")
                _check_file_entry(where, entry, problems)
                if isinstance(entry, Mapping):
                    _check_tensor_list(f"{where}.inputs", entry.get("inputs"), problems)
                    _check_tensor_list(f"{where}.outputs", entry.get("outputs"), problems)
                    if "external_data" in entry:
                        _check_file_entry(f"{where}.external_data", entry["external_data"], problems)
                    if "openvino_ir" in entry:
                        ir = entry["openvino_ir"]
                        _check_file_entry(f"{where}.openvino_ir", ir, problems)
                        if isinstance(ir, Mapping):
                            _check_file_entry(f"{where}.openvino_ir.weights", ir.get("weights"), problems)
    engines = manifest.get("engines")
    if engines is not None and not isinstance(engines, Mapping):
        problems.append("engines: expected an object keyed by graph name")
    for graph, entry in (engines or {}).items() if isinstance(engines, Mapping) else ():
        where = f"engines.{graph}"
        _check_file_entry(where, entry, problems)
        if isinstance(entry, Mapping):
            missing = [k for k in ENGINE_KEYS if k not in entry]
            if missing:
                problems.append(f"{where}: missing {missing}")
            if "precision" in entry and entry["precision"] not in PRECISIONS:
                problems.append(f"{where}.precision: {entry['precision']!r} is not one of {list(PRECISIONS)} "
                                "(an engine from an older `ts2net engine`; rebuild it with `ts2net engine`)")
            gpu = entry.get("gpu")
            if "gpu" in entry and not (isinstance(gpu, Mapping) and {"name", "compute_capability"} <= gpu.keys()):
                problems.append(f"{where}.gpu: expected an object with name and compute_capability")
    if manifest.get("reference") is not None:
        _check_file_entry("reference", manifest["reference"], problems)
    return problems
