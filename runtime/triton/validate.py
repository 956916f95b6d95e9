"""`ts2net triton --check REPO`: a Triton model repository checked offline, every problem at once.

Triton itself only finds a bad config when the server loads it, one model at a time, on the
production machine. This finds the same mistakes here, without a server:

* every `config.pbtxt` parses as `ModelConfig` (tritonclient's protobuf, protobuf's text format);
* its name, platform/backend and model file agree with the folder;
* the model file exists, has the sha256 recorded at writing, and its inputs / outputs (read from
  the ONNX graph with `onnx`; a TensorRT plan is checked against its manifest entry, since reading
  a plan needs TensorRT and the GPU it was built for) have the config's names, `TYPE_*` dtypes and
  dims, with the batch as the leading dynamic axis when `max_batch_size` > 0;
* the same tensors agree with the bundle's manifest (the record `ts2net-repository.json` keeps the
  manifest entries; the bundle itself is compared too when it is given or still at its path);
* batch limits: preferred sizes and warmup batches within `max_batch_size`, and for TensorRT
  `max_batch_size` within the engine's optimization profile;
* warmup inputs name the model's inputs with their dtypes and dims.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..bundle import Bundle, BundleError, open_bundle
from ..files import sha256_file
from . import MODEL_NAMES
from .repository import BACKEND_FIELDS, REPOSITORY_FILE, REPOSITORY_FORMAT, TRITON_DTYPES, import_model_config

# ONNX TensorProto element type -> manifest dtype
ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}


def _onnx_tensors(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX graph as {name, dtype, shape} with named / unknown dims as strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(value) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        return {"name": value.name, "dtype": ONNX_DTYPES.get(tensor.elem_type, f"onnx elem_type {tensor.elem_type}"),
                "shape": shape}

    return ([describe(v) for v in model.graph.input if v.name not in initializers],
            [describe(v) for v in model.graph.output])


def _dtype_name(mc, value: int) -> str:
    return mc.DataType.Name(value)


def _compare_config_tensors(where: str, kind: str, config_tensors, expected: list[Mapping[str, Any]],
                            batched: bool, against: str, mc) -> list[str]:
    """Config inputs/outputs vs tensors {name, dtype, shape} (shape including the batch axis)."""
    problems = []
    by_name = {t.name: t for t in config_tensors}
    wanted = {t["name"]: t for t in expected}
    for name in sorted(set(wanted) - set(by_name)):
        problems.append(f"{where}: {against} has {kind} {name!r}, the config does not")
    for name in sorted(set(by_name) - set(wanted)):
        problems.append(f"{where}: config {kind} {name!r} is not a {kind} of {against} (it has {sorted(wanted)})")
    for name in sorted(set(by_name) & set(wanted)):
        tensor, spec = by_name[name], wanted[name]
        want_type = TRITON_DTYPES.get(spec["dtype"], f"unsupported dtype {spec['dtype']}")
        if _dtype_name(mc, tensor.data_type) != want_type:
            problems.append(f"{where}: {kind} {name!r} has data_type {_dtype_name(mc, tensor.data_type)}, {against} "
                            f"has {spec['dtype']} ({want_type})")
        shape = list(spec["shape"])
        if batched:
            if not shape or isinstance(shape[0], int):
                problems.append(f"{where}: {kind} {name!r}: max_batch_size > 0 needs a dynamic leading batch axis, "
                                f"{against} has shape {shape}")
                continue
            shape = shape[1:]
        dims = list(tensor.dims)
        expected_dims = [d if isinstance(d, int) else -1 for d in shape]
        if dims != expected_dims:
            problems.append(f"{where}: {kind} {name!r} has dims {dims}, {against} has {expected_dims} "
                            f"(shape {list(spec['shape'])}{', batch excluded' if batched else ''})")
    return problems


def _load_record(repo: Path, problems: list[str]) -> dict[str, Any] | None:
    path = repo / REPOSITORY_FILE
    if not path.is_file():
        problems.append(f"{path}: missing (write the repository with `ts2net triton`); configs are checked against "
                        "their graph files only")
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: not readable JSON ({exc})")
        return None
    if not isinstance(record, dict) or record.get("format") != REPOSITORY_FORMAT or not isinstance(
            record.get("models"), dict):
        problems.append(f"{path}: not a {REPOSITORY_FORMAT} record (format/models missing)")
        return None
    return record


def _open_record_bundle(record: Mapping[str, Any] | None) -> Bundle | None:
    """The bundle the repository was written from, when it is still where it was (else None)."""
    path = (record or {}).get("bundle", {}).get("path")
    if not path or not (Path(path) / "manifest.json").is_file():
        return None
    try:
        return open_bundle(path, verify=False)
    except BundleError:
        return None


@dataclass
class _Model:
    """One parsed model folder and what it is checked against."""

    where: str                       # the config's path, prefix of every problem
    folder: Path
    graph: str
    kind: str                        # onnxruntime | openvino | tensorrt
    config: Any                      # ModelConfig
    entry: Mapping[str, Any]         # the record's entry for this model ({} without a record)
    source: dict[str, Any] | None    # the manifest entry recorded at writing
    mc: Any

    @property
    def batched(self) -> bool:
        return self.config.max_batch_size > 0

    def compare(self, tensors: Mapping[str, Any], label: str) -> list[str]:
        """Config inputs and outputs vs {"inputs", "outputs"} tensor lists."""
        return (_compare_config_tensors(self.where, "input", self.config.input, tensors["inputs"], self.batched,
                                        label, self.mc)
                + _compare_config_tensors(self.where, "output", self.config.output, tensors["outputs"],
                                          self.batched, label, self.mc))


def _parse_model(repo: Path, name: str, graph: str, entry: Mapping[str, Any] | None, mc, text_format
                 ) -> tuple[_Model | None, list[str]]:
    """The parsed config (None when it cannot be checked further) and the problems found so far."""
    folder = repo / name
    config_path = folder / "config.pbtxt"
    if not folder.is_dir():
        return None, [f"{folder}: model folder missing"]
    if not config_path.is_file():
        return None, [f"{config_path}: missing"]
    config = mc.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        return None, [f"{config_path}: does not parse as a Triton ModelConfig: {exc}"]
    where = str(config_path)
    problems = []
    if config.name and config.name != name:
        problems.append(f"{where}: name {config.name!r} differs from its folder {name!r} (Triton refuses to load it)")
    kind = next((k for k, (platform, backend, _) in BACKEND_FIELDS.items()
                 if (platform and config.platform == platform) or (backend and config.backend == backend)), None)
    if kind is None:
        problems.append(f"{where}: platform {config.platform!r} / backend {config.backend!r} is none of "
                        f"onnxruntime_onnx, tensorrt_plan, openvino")
        return None, problems
    entry = entry or {}
    if entry.get("backend") and entry["backend"] != kind:
        problems.append(f"{where}: the config is for Triton's {kind} backend, {REPOSITORY_FILE} says "
                        f"{entry['backend']}")
    source = dict(entry["source"]) if isinstance(entry.get("source"), Mapping) else None
    return _Model(where, folder, graph, kind, config, entry, source, mc), problems


def _model_file_problems(model: _Model) -> list[str]:
    """The model file: present, unchanged since writing, and (ONNX) with the config's I/O."""
    filename = model.config.default_model_filename or BACKEND_FIELDS[model.kind][2]
    path = model.folder / "1" / filename
    problems = []
    if not path.is_file():
        problems.append(f"{path}: model file missing (the config names {filename!r})")
    else:
        if model.source and model.source.get("sha256") and sha256_file(path) != model.source["sha256"]:
            problems.append(f"{path}: sha256 differs from the bundle file it was copied from "
                            f"({model.source.get('file')}): the file was altered; rewrite the repository")
        if model.kind != "tensorrt":
            try:
                inputs, outputs = _onnx_tensors(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable graph is one problem line
                problems.append(f"{path}: not a readable ONNX graph ({type(exc).__name__}: {exc})")
            else:
                problems += model.compare({"inputs": inputs, "outputs": outputs}, f"the graph {path.name}")
    for extra in model.entry.get("extra_files") or []:
        extra_path = model.folder / "1" / extra["file"]
        if not extra_path.is_file():
            problems.append(f"{extra_path}: external data file missing")
        elif sha256_file(extra_path) != extra["sha256"]:
            problems.append(f"{extra_path}: sha256 differs from the bundle's external data file")
    return problems


def _manifest_problems(model: _Model, bundle: Bundle | None) -> tuple[list[str], Mapping[str, Any] | None]:
    """Tensors vs the recorded manifest entry and the bundle's own; also returns the newest entry."""
    manifests = [(model.source, "the manifest entry recorded at writing")] if model.source else []
    problems = []
    if bundle is not None:
        try:
            if model.kind == "tensorrt":
                live = bundle.engine_entry(model.graph)
            else:
                precision = model.entry.get("precision") or model.config.parameters["ts2net_precision"].string_value
                live = bundle.graph_entry(model.graph, precision or "fp32")
            if live != model.source:
                manifests.append((live, f"the bundle manifest ({bundle.path.name})"))
            if model.source and live.get("sha256") != model.source.get("sha256"):
                problems.append(f"{model.where}: the bundle's {live.get('file')} changed since the repository was "
                                "written (sha256 differs): rewrite the repository")
        except BundleError as exc:
            problems.append(f"{model.where}: {exc}")
    for spec, label in manifests:
        problems += model.compare(spec, label)
    return problems, (manifests[-1][0] if manifests else None)


def _batching_problems(model: _Model, engine: Mapping[str, Any] | None) -> tuple[list[str], tuple[int, int] | None]:
    """Preferred sizes within max_batch_size and, for TensorRT, everything within the engine profile."""
    config, where = model.config, model.where
    problems = []
    if config.max_batch_size < 0:
        problems.append(f"{where}: max_batch_size {config.max_batch_size} is negative")
    preferred = list(config.dynamic_batching.preferred_batch_size)
    for size in preferred:
        if not 1 <= size <= max(config.max_batch_size, 0):
            problems.append(f"{where}: dynamic_batching.preferred_batch_size {size} is outside 1..max_batch_size "
                            f"{config.max_batch_size}")
    if config.HasField("dynamic_batching") and not model.batched:
        problems.append(f"{where}: dynamic_batching needs max_batch_size > 0")
    for group in config.instance_group:
        if group.count < 1:
            problems.append(f"{where}: instance_group count {group.count} must be >= 1")
    if model.kind != "tensorrt":
        return problems, None
    from ..backends import profile_batch_range

    profile = profile_batch_range(engine.get("profile"), list(engine.get("inputs") or [])) if engine else None
    if profile is None:
        problems.append(f"{where}: no engine optimization profile to check max_batch_size against (manifest "
                        "engines entry missing or without profile)")
        return problems, None
    low, high = profile
    if config.max_batch_size > high:
        problems.append(f"{where}: max_batch_size {config.max_batch_size} exceeds the engine's optimization "
                        f"profile max {high}: Triton would send batches the plan cannot run")
    for size in preferred:
        if not low <= size <= high:
            problems.append(f"{where}: preferred batch {size} is outside the engine profile {low}..{high}")
    return problems, profile


def _warmup_problems(model: _Model, profile: tuple[int, int] | None) -> list[str]:
    """Warmup batches within the limits; warmup inputs are the model's inputs with their dtypes and dims."""
    config, mc = model.config, model.mc
    inputs = {t.name: t for t in config.input}
    problems = []
    for warmup in config.model_warmup:
        label = f"{model.where}: model_warmup {warmup.name!r}"
        if model.batched and not 1 <= warmup.batch_size <= config.max_batch_size:
            problems.append(f"{label}: batch_size {warmup.batch_size} is outside 1..max_batch_size "
                            f"{config.max_batch_size}")
        if profile and not profile[0] <= warmup.batch_size <= profile[1]:
            problems.append(f"{label}: batch_size {warmup.batch_size} is outside the engine profile "
                            f"{profile[0]}..{profile[1]}")
        if set(warmup.inputs) != set(inputs):
            problems.append(f"{label}: inputs {sorted(warmup.inputs)} differ from the model's {sorted(inputs)}")
        for name, data in warmup.inputs.items():
            want = inputs.get(name)
            if want is not None and (data.data_type != want.data_type or list(data.dims) != list(want.dims)):
                problems.append(f"{label}: input {name!r} is {_dtype_name(mc, data.data_type)} {list(data.dims)}, "
                                f"the model's is {_dtype_name(mc, want.data_type)} {list(want.dims)}")
    return problems


def check_model(repo: Path, name: str, graph: str, entry: Mapping[str, Any] | None, bundle: Bundle | None,
                mc, text_format) -> list[str]:
    """Every problem of one model folder."""
    model, problems = _parse_model(repo, name, graph, entry, mc, text_format)
    if model is None:
        return problems
    problems += _model_file_problems(model)
    manifest_problems, engine = _manifest_problems(model, bundle)
    batching_problems, profile = _batching_problems(model, engine)
    return problems + manifest_problems + batching_problems + _warmup_problems(model, profile)


def check_repository(repo: str | Path, bundle: Bundle | str | Path | None = None) -> list[str]:
    """Every problem of a repository written by `ts2net triton` (empty list: valid)."""
    mc, text_format = import_model_config()
    repo = Path(repo)
    if not repo.is_dir():
        return [f"{repo}: not a directory (a Triton model repository is a folder of model folders)"]
    problems: list[str] = []
    record = _load_record(repo, problems)
    if bundle is not None and not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle, verify=False)
    bundle = bundle or _open_record_bundle(record)
    if bundle is not None and record and record.get("bundle", {}).get("id") not in (None, bundle.content_id):
        problems.append(f"{repo / REPOSITORY_FILE}: written from bundle id {record['bundle']['id']}, but "
                        f"{bundle.path} has id {bundle.content_id} (re-exported since?): rewrite the repository")
    models = (record or {}).get("models") or {}
    for graph, name in MODEL_NAMES.items():
        entry = dict(models.get(name) or {})
        if record:
            entry.setdefault("precision", record.get("precision"))
            entry.setdefault("backend", record.get("backend"))
        problems += check_model(repo, name, graph, entry or None, bundle, mc, text_format)
    return problems
