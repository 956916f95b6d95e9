"""INT8 graphs of a bundle: calibration set, quantization, gates, manifest entries.

Two forms of each INT8 graph are written (docs/int8.md has the measurements behind the choice):

- ``{graph}.int8.onnx``: quantized by ONNX Runtime's quantization tools, run by ONNX Runtime (its
  U8S8 VNNI / AMX kernels) and by OpenVINO where no IR is present. Dynamic quantization
  (``quantize_dynamic``: per-channel symmetric INT8 weights, activations quantized per call) is the
  default because it measured faster on ONNX Runtime than the static QDQ graph and needs no
  activation ranges; ``--int8-onnx static`` writes the calibrated QDQ graph instead.
- ``{graph}.int8.xml`` + ``.bin``: the OpenVINO IR made by NNCF (``nncf.quantize`` on the OpenVINO
  model of the FP32 graph, transformer preset, activations calibrated on the calibration set,
  weights per channel; `nncf_recipe`). It was the fastest INT8 form on OpenVINO; the manifest records it as
  ``openvino_ir`` of the int8 entry, which OpenVINO consumers (Python and C++) prefer.

Both keep the token selector (score predictor, TopK, the index reordering, the gather) in float,
so the selection stays TopK-deterministic, and the float islands of ``FLOAT_ISLAND_PATTERNS``;
LayerNorm and Softmax are never quantized (ONNX Runtime quantizes only MatMul / Gemm here; NNCF's
transformer preset keeps them float).

A form that fails the int8 gates on the reference inputs (runtime.parity.THRESHOLDS["int8"]) is
not listed in the manifest: the figures are recorded under ``parity`` and a warning says why.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from runtime.bundle_format import PARITY_INT8_OPENVINO, file_entry, graph_file, openvino_ir_files
from runtime.files import npz_bytes
from runtime.parity import ParityResult, compare_outputs

log = logging.getLogger(__name__)

# Node-name scope kept in float in every INT8 form (the same scope as the FP16 graphs' FP32 island).
FLOAT_SCOPES = ("/visual_token_selector/",)
#: Node-name patterns (full matches; the PyTorch module names, the same for every preset) both INT8
#: forms keep in float besides FLOAT_SCOPES (docs/int8.md, "Float islands"): the patch embedding (its
#: input is raw normalised pixels), the first visual block, the visual projection and the temporal
#: transformer. Quantized by NNCF, they gave a tail of real frames at cosine 0.88 and 14% changed
#: top-1 answers on the demo model; ONNX Runtime's dynamic INT8 of them changed 4.2% of the t2v
#: top-1 answers on the demo's 1,000 test clips (gate: 3%). In float, both forms pass. The other
#: visual blocks, most of the FLOPs, stay INT8 whole (keeping their attention products float as well
#: broke OpenVINO's INT8 chains: about 2x slower).
FLOAT_ISLAND_PATTERNS = (r".*/visual/conv1/.*", r".*/visual/transformer/resblocks\.0/.*", r".*/visual/MatMul$",
                         r".*/transformerClip/.*")
FLOAT_OP_TYPES = ("LayerNormalization", "Softmax")
QUANTIZED_OP_TYPES = ("MatMul", "Gemm")
ONNX_MODES = ("dynamic", "static")
DEFAULT_ONNX_MODE = "dynamic"
DEFAULT_CALIBRATION_VIDEOS = 16
DEFAULT_CALIBRATION_CAPTIONS = 64
QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                                "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
                                "MatMulIntegerToFloat"})


class CalibrationError(ValueError):
    """The calibration inputs cannot be used (no readable video, no caption, bad file)."""


# ------------------------------------------------------------------------------ calibration set
@dataclass
class CalibrationSet:
    """Real inputs the activations are calibrated on: decoded frames and tokenized captions."""

    frames: np.ndarray          # float32 [n, T, 3, S, S], the runtime's preprocessing
    frame_mask: np.ndarray      # int64 [n, T]
    input_ids: np.ndarray       # int64 [m, max_words]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Checksum of exactly what was fed to the calibration (arrays in a fixed npz layout)."""
        return hashlib.sha256(npz_bytes({"frames": self.frames, "frame_mask": self.frame_mask,
                                         "input_ids": self.input_ids})).hexdigest()

    def feeds(self, graph: str) -> list[dict[str, np.ndarray]]:
        """One batch-1 feed per calibration item of `graph`."""
        if graph == "text":
            return [{"input_ids": self.input_ids[i:i + 1]} for i in range(len(self.input_ids))]
        return [{"frames": self.frames[i:i + 1], "frame_mask": self.frame_mask[i:i + 1]}
                for i in range(len(self.frames))]

    def manifest_entry(self, graph: str) -> dict[str, Any]:
        items = len(self.input_ids) if graph == "text" else len(self.frames)
        return {"items": items, "kind": "captions" if graph == "text" else "videos", "sha256": self.sha256,
                "sha256_of": "npz of frames, frame_mask, input_ids (runtime.files.npz_bytes)", **self.source}


def read_captions(path: Path) -> list[str]:
    """Captions from a text file (one per line), or a CSV / JSONL with a `sentence` or `caption` field."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        column = next((c for c in ("sentence", "caption") if rows and c in rows[0]), None)
        if column is None:
            raise CalibrationError(f"{path}: a CSV of captions needs a 'sentence' or 'caption' column")
        captions = [r[column] for r in rows]
    elif path.suffix.lower() in (".jsonl", ".json"):
        captions = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    captions.append(record.get("sentence") or record["caption"])
                except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                    raise CalibrationError(f"{path}:{number}: expected a JSON object with 'caption' ({exc})") from exc
    else:
        captions = text.splitlines()
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise CalibrationError(f"{path}: no captions found")
    return captions


#: (count, workdir) -> (video paths, captions, description): real clips to calibrate on when the user
#: gives none. The command line hands in the embedded benchmark (cli/calibration.py); the export
#: package does not import the benchmark generator (docs/architecture.md).
CalibrationSource = Callable[[int, Path], "tuple[list[Path], list[str], str]"]


def load_calibration(bundle, videos: Path | None = None, captions: Path | None = None,
                     max_videos: int = DEFAULT_CALIBRATION_VIDEOS, max_captions: int = DEFAULT_CALIBRATION_CAPTIONS,
                     progress: bool = True, default_source: CalibrationSource | None = None) -> CalibrationSet:
    """Decode calibration videos and tokenize captions with the bundle's own preprocessing.

    videos: a folder of video files (the first `max_videos` in name order are used); captions: a
    file for `read_captions`. Whatever is not given comes from `default_source` (the command line's
    is the embedded benchmark, rendered into a temporary folder), so an export without arguments
    still calibrates on real decoded frames and real captions. A video that cannot be decoded is an
    error, never skipped silently.
    """
    from runtime.encoder import decode_videos

    source: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ts2net-calibration-") as tmp:
        paths: list[Path] = []
        bench_captions: list[str] = []
        if videos is None or captions is None:
            if default_source is None:
                raise CalibrationError("INT8 calibration needs real videos and captions: pass --calibration-videos "
                                       "DIR and --calibration-captions FILE (`ts2net export` / `ts2net quantize` "
                                       "default to the embedded benchmark)")
            bench_paths, bench_captions, description = default_source(max_videos, Path(tmp))
            if videos is None:
                paths, source["videos_source"] = bench_paths, description
        if videos is not None:
            folder = Path(videos)
            if not folder.is_dir():
                raise CalibrationError(f"--calibration-videos {folder}: not a directory")
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm",
                                                                               ".mov", ".m4v"))[:max_videos]
            if not paths:
                raise CalibrationError(f"--calibration-videos {folder}: no video files (.mp4, .avi, .mkv, .webm, "
                                       ".mov, .m4v)")
            source["videos_source"] = f"{folder} (first {len(paths)} video files by name)"
        text = read_captions(captions) if captions is not None else bench_captions
        source["captions_source"] = f"{captions}" if captions is not None else "the captions of the same clips"
        text = text[:max_captions]
        frames, masks = [], []
        for batch in decode_videos(bundle, paths, batch_size=8, progress=progress):
            frames.append(batch.frames)
            masks.append(batch.mask)
    ids = bundle.tokenizer().encode_batch(text, max_words=bundle.max_words).astype(np.int64)
    return CalibrationSet(np.concatenate(frames).astype(np.float32), np.concatenate(masks).astype(np.int64), ids,
                          source)


# ------------------------------------------------------------------------------ quantizers
def in_float_island(name: str) -> bool:
    """Whether a node of that name is one every INT8 form keeps in float (FLOAT_SCOPES, FLOAT_ISLAND_PATTERNS)."""
    return any(scope in name for scope in FLOAT_SCOPES) or any(re.fullmatch(p, name) for p in FLOAT_ISLAND_PATTERNS)


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes every INT8 form keeps in float: the token selector and the float islands."""
    return [n.name for n in model.graph.node if in_float_island(n.name)]


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(fp32_path: Path, out_path: Path, mode: str, feeds: list[dict[str, np.ndarray]]) -> Path:
    """ONNX Runtime quantization of a graph: MatMul / Gemm weights per channel, the selector in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in ONNX_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {ONNX_MODES}")
    exclude = float_nodes(onnx.load(str(fp32_path), load_external_data=False))
    common = dict(op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, nodes_to_exclude=exclude,
                  weight_type=QuantType.QInt8)
    if mode == "dynamic":
        quantize_dynamic(str(fp32_path), str(out_path), **common)
    else:
        quantize_static(str(fp32_path), str(out_path), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False}, **common)
    return out_path


def nncf_recipe() -> dict[str, Any]:
    """Keyword arguments of nncf.quantize for our graphs (docs/int8.md, "The NNCF recipe").

    Transformer model type (LayerNorm, Softmax and the residual adds stay float), the token
    selector and FLOAT_ISLAND_PATTERNS ignored, symmetric activations (the PERFORMANCE preset) and
    SmoothQuant off: on the demo model the default MIXED preset with SmoothQuant kept 93.5% of the
    selected patches on the reference inputs (below the 95% gate); PERFORMANCE without SmoothQuant
    kept 96.8% with a higher embedding cosine, at the same speed.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return {"model_type": nncf.ModelType.TRANSFORMER, "preset": nncf.QuantizationPreset.PERFORMANCE,
            "ignored_scope": nncf.IgnoredScope(patterns=[f".*{scope.strip('/')}.*" for scope in FLOAT_SCOPES] +
                                               list(FLOAT_ISLAND_PATTERNS), validate=False),
            "advanced_parameters": AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))}


def quantize_nncf(fp32_path: Path, xml_path: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """NNCF post-training quantization of the OpenVINO model of a graph, saved as IR (.xml + .bin)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_path))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **nncf_recipe())
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return xml_path


# ------------------------------------------------------------------------------ running and gates
def run_onnxruntime(path: Path, feed: dict[str, np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def run_openvino(path: Path, feed: dict[str, np.ndarray], hint: str = "f32", threads: int | None = None
                 ) -> dict[str, np.ndarray]:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    result = compiled(feed)
    return {port.get_any_name(): np.asarray(value) for port, value in result.items()}


def reference_parity(ref: dict[str, np.ndarray], text_out: dict[str, np.ndarray], video_out: dict[str, np.ndarray],
                     precision: str, similarity_args: dict[str, Any]) -> ParityResult:
    produced = {"text_embeds": text_out["text_embeds"], "frame_embeds": video_out["frame_embeds"],
                "frame_mask": ref["frame_mask"]}
    if "patch_indices" in video_out:
        produced["patch_indices"] = video_out["patch_indices"].astype(np.int64)
    return compare_outputs(ref, produced, precision, **similarity_args)


def _feeds_of(ref: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return {"input_ids": ref["input_ids"]}, {"frames": ref["frames"], "frame_mask": ref["frame_mask"]}


def bf16_parity(bundle_dir: Path, ref: dict[str, np.ndarray], similarity_args: dict[str, Any]) -> dict[str, Any]:
    """The bf16 row on the reference inputs: OpenVINO with the bf16 hint on the FP32 graphs, or why not."""
    from runtime.openvino_backend import precision_status

    ok, reason = precision_status("bf16")
    if not ok:
        return {"backend": "openvino", "precision": "bf16", "passed": None, "skipped": reason}
    text_feed, video_feed = _feeds_of(ref)
    result = reference_parity(ref, run_openvino(bundle_dir / "text.onnx", text_feed, "bf16"),
                              run_openvino(bundle_dir / "video.onnx", video_feed, "bf16"), "bf16", similarity_args)
    return {"backend": "openvino (INFERENCE_PRECISION_HINT=bf16 on the fp32 graphs)", **result.to_dict()}


# ------------------------------------------------------------------------------ the bundle step
def quantize_bundle(bundle_dir: Path, manifest: dict[str, Any], calibration: CalibrationSet,
                    ref: dict[str, np.ndarray], onnx_mode: str = DEFAULT_ONNX_MODE, openvino_ir: bool = True,
                    progress: bool = True) -> dict[str, Any]:
    """Write the INT8 graphs of a bundle and enter them in `manifest` (in memory) if they pass the gates.

    Returns {"seconds": ..., "parity": {"int8": ..., "int8_openvino": ...}}; the caller writes the
    manifest. Files of a form that fails its gates are removed so the bundle never holds an
    unlisted graph.
    """
    from tqdm import tqdm

    bundle_dir = Path(bundle_dir)
    ir_unavailable = None
    if openvino_ir:
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except ImportError as exc:
            ir_unavailable = (f"no OpenVINO IR: {exc.name or exc} is not installed (pip install "
                              "'ts2net-deploy[openvino]'); OpenVINO consumers run the int8 .onnx")
            log.warning(ir_unavailable)
            openvino_ir = False
    sim_args = {"logit_scale": float(manifest["similarity"]["logit_scale"]),
                "frame_mask_mode": str(manifest["similarity"]["frame_mask_mode"]),
                "tokens_per_frame": int(manifest["similarity"]["tokens_per_frame"]),
                "softmax_factor": float(manifest["similarity"]["frame_softmax_factor"])}
    seconds: dict[str, float] = {}
    bar = tqdm(total=4 if openvino_ir else 2, desc="int8", unit="graph", disable=not progress)
    onnx_files, ir_files = {}, {}
    for graph in ("text", "video"):
        fp32 = bundle_dir / manifest["graphs"][graph]["fp32"]["file"]
        feeds = calibration.feeds(graph)
        bar.set_postfix_str(f"{graph} onnxruntime {onnx_mode}")
        start = time.perf_counter()
        onnx_files[graph] = quantize_onnx(fp32, bundle_dir / graph_file(graph, "int8"), onnx_mode, feeds)
        seconds[f"{graph} onnxruntime {onnx_mode}"] = round(time.perf_counter() - start, 3)
        bar.update()
        if openvino_ir:
            bar.set_postfix_str(f"{graph} nncf")
            start = time.perf_counter()
            ir_files[graph] = quantize_nncf(fp32, bundle_dir / openvino_ir_files(graph)[0], feeds)
            seconds[f"{graph} nncf openvino ir"] = round(time.perf_counter() - start, 3)
            bar.update()
    bar.close()

    text_feed, video_feed = _feeds_of(ref)
    onnx_parity = reference_parity(ref, run_onnxruntime(onnx_files["text"], text_feed),
                                   run_onnxruntime(onnx_files["video"], video_feed), "int8", sim_args)
    parity = {"int8": {"backend": "onnxruntime-cpu", "graphs": f"*.int8.onnx ({onnx_mode})", **onnx_parity.to_dict()}}
    ir_parity = None
    if openvino_ir:
        ir_parity = reference_parity(ref, run_openvino(ir_files["text"], text_feed),
                                     run_openvino(ir_files["video"], video_feed), "int8", sim_args)
        parity[PARITY_INT8_OPENVINO] = {"backend": "openvino", "graphs": "*.int8.xml (nncf)", **ir_parity.to_dict()}
    elif ir_unavailable:
        parity[PARITY_INT8_OPENVINO] = {"backend": "openvino", "precision": "int8", "passed": None,
                                   "skipped": ir_unavailable}

    def remove(paths: Iterable[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    keep_ir = ir_parity is not None and ir_parity.passed and onnx_parity.passed
    if not onnx_parity.passed:
        log.warning("INT8 graphs (ONNX Runtime %s) fail the int8 gates and are not shipped: %s", onnx_mode,
                    "; ".join(onnx_parity.failures))
        remove(onnx_files.values())
    if ir_parity is not None and not keep_ir:
        if not ir_parity.passed:
            log.warning("INT8 OpenVINO IR (NNCF) fails the int8 gates and is not shipped: %s",
                        "; ".join(ir_parity.failures))
        remove([p for x in ir_files.values() for p in (x, x.with_suffix(".bin"))])
    for graph in ("text", "video"):
        manifest["graphs"][graph].pop("int8", None)
        if not onnx_parity.passed:
            continue
        fp32_entry = manifest["graphs"][graph]["fp32"]
        model = onnx.load(str(onnx_files[graph]), load_external_data=False)
        entry = file_entry(bundle_dir, onnx_files[graph].name, precision="int8",
                            opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                            inputs=fp32_entry["inputs"], outputs=fp32_entry["outputs"],
                            dynamic_axes=fp32_entry.get("dynamic_axes", ["batch"]),
                            quantization={"tool": "onnxruntime.quantization", "mode": onnx_mode,
                                          "op_types": list(QUANTIZED_OP_TYPES), "weights": "int8 symmetric per channel",
                                          "activations": ("uint8 asymmetric, per call" if onnx_mode == "dynamic" else
                                                          "uint8 asymmetric, MinMax-calibrated (QDQ)")},
                            float_islands=list(FLOAT_SCOPES) + list(FLOAT_ISLAND_PATTERNS) + list(FLOAT_OP_TYPES),
                            calibration=calibration.manifest_entry(graph))
        if keep_ir:
            xml = ir_files[graph]
            entry["openvino_ir"] = file_entry(bundle_dir, xml.name, weights=file_entry(bundle_dir, xml.with_suffix(
                ".bin").name), tool="nncf.quantize (OpenVINO backend, ModelType.TRANSFORMER, PERFORMANCE preset: symmetric "
                "activations, SmoothQuant off, per-channel weights; float: patch embedding, first visual block, visual "
                "projection, temporal transformer)",
                calibration=calibration.manifest_entry(graph))
        manifest["graphs"][graph]["int8"] = entry
    return {"seconds": seconds, "parity": parity}


def add_int8_to_bundle(bundle_dir: Path, videos: Path | None = None, captions: Path | None = None,
                       onnx_mode: str = DEFAULT_ONNX_MODE, openvino_ir: bool = True,
                       max_videos: int = DEFAULT_CALIBRATION_VIDEOS, max_captions: int = DEFAULT_CALIBRATION_CAPTIONS,
                       progress: bool = True, default_source: CalibrationSource | None = None) -> dict[str, Any]:
    """`ts2net quantize`: (re)make the INT8 graphs of an existing bundle and rewrite its manifest."""
    from runtime.bundle import open_bundle

    from . import manifest as mf

    bundle = open_bundle(bundle_dir)
    manifest = json.loads(json.dumps(bundle.manifest))
    calibration = load_calibration(bundle, videos, captions, max_videos, max_captions, progress, default_source)
    outcome = quantize_bundle(Path(bundle_dir), manifest, calibration, bundle.reference(), onnx_mode, openvino_ir,
                              progress)
    manifest["parity"].update(outcome["parity"])
    manifest["parity"]["bf16"] = bf16_parity(Path(bundle_dir), bundle.reference(), bundle.similarity_args)
    manifest.setdefault("export_seconds", {}).update(outcome["seconds"])
    mf.write_manifest(bundle_dir, manifest)
    return manifest


# ------------------------------------------------------------------------------ graph inspection
def quantized_nodes_in_float_scope(model: onnx.ModelProto) -> list[str]:
    """Nodes of the float scope (or LayerNorm / Softmax / TopK anywhere) that are quantized ops or read one.

    Empty for a correct INT8 graph: the token selector, TopK, LayerNorm and Softmax compute in float
    on float inputs that no DequantizeLinear / integer op feeds directly.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for node in model.graph.node:
        guarded = any(s in node.name for s in FLOAT_SCOPES) or node.op_type in FLOAT_OP_TYPES + ("TopK",)
        if not guarded:
            continue
        if node.op_type in QUANTIZED_ONNX_OPS:
            bad.append(f"{node.name} is {node.op_type}")
        for name in node.input:
            producer = producers.get(name)
            if producer is not None and producer.op_type in QUANTIZED_ONNX_OPS and any(
                    s in node.name for s in FLOAT_SCOPES):
                bad.append(f"{node.name} reads {producer.op_type} {producer.name}")
    return bad


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_ONNX_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def openvino_fake_quantized_in_float_scope(xml_path: Path) -> tuple[int, list[str]]:
    """(FakeQuantize nodes in the IR, those inside or feeding the float scope): the second must be empty."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    fake = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    bad = []
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if not any(s in name for s in FLOAT_SCOPES):
            continue
        if op.get_type_name() == "FakeQuantize":
            bad.append(name)
        for value in op.input_values():
            producer = value.get_node()
            if producer.get_type_name() == "FakeQuantize":
                bad.append(f"{name} reads {producer.get_friendly_name()}")
    return len(fake), bad
