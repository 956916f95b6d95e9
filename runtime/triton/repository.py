"""`ts2net triton`: a bundle -> a Triton model repository for the production `tritonserver`.

Layout written (one model per graph; Triton loads every sub-folder of the repository)::

    REPO/
      README.md                    how to serve it (tritonserver command, curl, tritonclient)
      ts2net-repository.json       what was written from which bundle (the validator's reference)
      ts2net_text/config.pbtxt     ModelConfig in protobuf text format
      ts2net_text/1/model.onnx     the graph (or model.plan, the TensorRT engine)
      ts2net_video/...

Why each config field is what it is:

* the batch is the manifest's one dynamic axis ("batch", always the leading one), so it becomes
  `max_batch_size` and leaves the `dims` (Triton's batching convention: dims exclude the batch);
* `dynamic_batching.preferred_batch_size` is the engine's profile (opt, max) when the bundle has
  engines (the sizes the deployment was tuned for), otherwise text 16/64 and video 4/16, the same
  defaults `ts2net engine` builds profiles with;
* a TensorRT plan runs only on GPUs of the compute capability and with the TensorRT release it was
  built with: both are recorded in `parameters`, the plan is listed in `cc_model_filenames` under
  its compute capability, and `max_batch_size` may not exceed the profile's max;
* `model_warmup` runs zero inputs at batch 1 and at the largest preferred batch, so the first
  user request does not pay for allocation / kernel selection.

Every copied file is hashed while it is copied and must match the manifest's sha256. The
repository is built in a temporary sibling folder, validated, and only then moved into place, so
a failed run never leaves a half-written repository and never damages an existing one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..bundle import Bundle, BundleError, open_bundle
from ..files import atomic_write_text
from . import MODEL_NAMES

TRITON_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
REPOSITORY_FILE = "ts2net-repository.json"
REPOSITORY_FORMAT = "ts2net-triton-repository"
DEFAULT_BATCH = {"text": (1, 16, 64), "video": (1, 4, 16)}   # (min, opt, max), as `ts2net engine`
DEFAULT_QUEUE_DELAY_US = 2000
EXAMPLE_CAPTION = "a dog runs on the beach"
# manifest dtype -> Triton DataType enum name
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "bool": "TYPE_BOOL", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8"}
# Triton backend -> (platform, backend, model file name inside 1/)
BACKEND_FIELDS = {"onnxruntime": ("onnxruntime_onnx", "", "model.onnx"),
                  "openvino": ("", "openvino", "model.onnx"),
                  "tensorrt": ("tensorrt_plan", "", "model.plan")}


class TritonRepositoryError(ValueError):
    """A repository that cannot be written as asked (bad option for this bundle, altered file, ...)."""


def import_model_config():
    """`tritonclient`'s ModelConfig protobuf and protobuf's text format, or a one-line install hint."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise TritonRepositoryError(f"Triton model configs need tritonclient's protobufs ({exc}): "
                                    "pip install 'tritonclient[grpc,http]' (or 'ts2net-deploy[triton]')") from exc
    return model_config_pb2, text_format


@dataclass
class ModelPlan:
    """What one Triton model is made of: the source file in the bundle and the config's numbers."""

    graph: str
    name: str
    backend: str
    precision: str
    source: Mapping[str, Any]          # the manifest's graph or engine entry (file, sha256, inputs, outputs)
    model_file: str                    # file name inside 1/
    max_batch: int
    preferred: list[int]
    instances: int
    batch_source: str                  # "engine profile" or "default"
    profile: tuple[int, int] | None = None   # engine (min, max) batch, TensorRT only
    extra_files: list[Mapping[str, Any]] = field(default_factory=list)   # external data, copied as named

    @property
    def inputs(self) -> list[Mapping[str, Any]]:
        return list(self.source["inputs"])

    @property
    def outputs(self) -> list[Mapping[str, Any]]:
        return list(self.source["outputs"])


def engine_precision(entry: Mapping[str, Any]) -> str:
    """"fp16" from an engine's "fp16 (strongly typed from the FP16 graph)"."""
    return str(entry.get("precision", "fp16")).split()[0]


def engine_batch_profile(entry: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of an engine entry's profile as `ts2net engine` records it, else None."""
    profile = entry.get("profile")
    if isinstance(profile, Mapping) and all(isinstance(profile.get(k), int) for k in ("min", "opt", "max")):
        return int(profile["min"]), int(profile["opt"]), int(profile["max"])
    return None


def batch_limits(bundle: Bundle, graph: str, max_batch: int | None = None
                 ) -> tuple[int, list[int], str, tuple[int, int, int]]:
    """(max batch, preferred sizes, where they came from, (min, opt, max)) of one graph.

    Preferred sizes are the profile's opt and max that fit under the limit, plus the limit itself.
    """
    engines = bundle.manifest.get("engines") or {}
    profile = engine_batch_profile(engines[graph]) if graph in engines else None
    low, opt, high = profile or DEFAULT_BATCH[graph]
    limit = max_batch or high
    preferred = sorted({b for b in (opt, high) if b <= limit} | {limit})
    return limit, preferred, "engine profile" if profile else "default", (low, opt, high)


def available_precisions(bundle: Bundle, backend: str) -> list[str]:
    """Precisions this Triton backend can serve from this bundle (both graphs present)."""
    if backend == "tensorrt":
        engines = bundle.manifest.get("engines") or {}
        if not all(g in engines for g in MODEL_NAMES):
            return []
        return sorted({engine_precision(engines[g]) for g in MODEL_NAMES})
    graphs = bundle.manifest["graphs"]
    return [p for p in graphs["text"] if p in graphs["video"]]


def plan_models(bundle: Bundle, backend: str = "onnxruntime", precision: str | None = None,
                max_batch: int | None = None, instances: int = 1) -> list[ModelPlan]:
    """The two models' plans; every bad option is one TritonRepositoryError naming the fix."""
    if backend not in TRITON_BACKENDS:
        raise TritonRepositoryError(f"--backend {backend!r}: expected one of {list(TRITON_BACKENDS)}")
    if instances < 1:
        raise TritonRepositoryError(f"--instances {instances}: must be >= 1")
    if max_batch is not None and max_batch < 1:
        raise TritonRepositoryError(f"--max-batch {max_batch}: must be >= 1")
    choices = available_precisions(bundle, backend)
    if backend == "tensorrt" and not choices:
        raise TritonRepositoryError(f"{bundle.path}: the bundle has no TensorRT engines (manifest `engines` is empty): "
                                    "build them on the serving GPU with `make engine`, or use --backend onnxruntime "
                                    "or openvino")
    precision = precision or ("fp32" if "fp32" in choices else choices[0])
    if precision not in choices:
        raise TritonRepositoryError(f"--precision {precision}: the bundle has no {precision} {backend} models "
                                    f"(it has {choices})")
    engines = bundle.manifest.get("engines") or {}
    plans = []
    for graph, name in MODEL_NAMES.items():
        limit, preferred, batch_source, (low, opt, high) = batch_limits(bundle, graph, max_batch)
        if backend == "tensorrt" and limit > high:
            raise TritonRepositoryError(f"--max-batch {max_batch}: the {graph} engine's optimization profile "
                                        f"ends at batch {high}; use --max-batch {high} or less, or rebuild the "
                                        f"engine with a larger profile (make engine BATCH=\"{graph}=1,{opt},"
                                        f"{max_batch}\")")
        if backend == "tensorrt":
            source = engines[graph]
            extra = []
        else:
            source = bundle.graph_entry(graph, precision)
            extra = [source["external_data"]] if "external_data" in source else []
        plans.append(ModelPlan(graph=graph, name=name, backend=backend, precision=precision, source=source,
                               model_file=BACKEND_FIELDS[backend][2], max_batch=limit, preferred=preferred,
                               instances=instances, batch_source=batch_source,
                               profile=(low, high) if backend == "tensorrt" else None, extra_files=extra))
    return plans


def build_config(plan: ModelPlan, bundle: Bundle):
    """The ModelConfig protobuf of one plan."""
    mc, _ = import_model_config()
    platform, backend_name, filename = BACKEND_FIELDS[plan.backend]
    config = mc.ModelConfig(name=plan.name, max_batch_size=plan.max_batch, default_model_filename=filename)
    if platform:
        config.platform = platform
    if backend_name:
        config.backend = backend_name
    for tensors, target in ((plan.inputs, config.input), (plan.outputs, config.output)):
        for tensor in tensors:
            entry = target.add()
            entry.name = tensor["name"]
            entry.data_type = mc.DataType.Value(TRITON_DTYPES[tensor["dtype"]])
            entry.dims.extend(int(d) for d in tensor["shape"][1:])
    config.dynamic_batching.preferred_batch_size.extend(plan.preferred)
    config.dynamic_batching.max_queue_delay_microseconds = DEFAULT_QUEUE_DELAY_US
    group = config.instance_group.add()
    group.count = plan.instances
    group.kind = {"tensorrt": mc.ModelInstanceGroup.KIND_GPU, "openvino": mc.ModelInstanceGroup.KIND_CPU,
                  "onnxruntime": mc.ModelInstanceGroup.KIND_AUTO}[plan.backend]
    for batch in sorted({1, max(plan.preferred)}):
        warmup = config.model_warmup.add()
        warmup.name = f"zeros_batch_{batch}"
        warmup.batch_size = batch
        for tensor in plan.inputs:
            data = warmup.inputs[tensor["name"]]
            data.data_type = mc.DataType.Value(TRITON_DTYPES[tensor["dtype"]])
            data.dims.extend(int(d) for d in tensor["shape"][1:])
            data.zero_data = True
    parameters = {"ts2net_bundle_id": bundle.content_id, "ts2net_graph": plan.graph, "ts2net_precision": plan.precision,
                  "ts2net_source_sha256": plan.source["sha256"]}
    if plan.backend == "tensorrt":
        gpu = plan.source.get("gpu") or {}
        capability = str(gpu.get("compute_capability", ""))
        parameters.update(ts2net_compute_capability=capability, ts2net_gpu=str(gpu.get("name", "")),
                          ts2net_tensorrt_version=str(plan.source.get("tensorrt_version", "")))
        if capability:
            config.cc_model_filenames[capability] = filename
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def config_text(config) -> str:
    _, text_format = import_model_config()
    return text_format.MessageToString(config)


def copy_verified(source: Path, target: Path, sha256: str) -> None:
    """Copy `source` to `target`, hashing the bytes as they are copied; a mismatch is an error."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise TritonRepositoryError(f"{source}: sha256 {digest.hexdigest()[:16]}... does not match the manifest's "
                                    f"{sha256[:16]}... (the file changed after export): re-export the bundle or "
                                    "restore the file")
    shutil.copystat(source, target)


def repository_record(bundle: Bundle, plans: list[ModelPlan]) -> dict[str, Any]:
    """`ts2net-repository.json`: what the validator checks the repository against."""
    return {
        "format": REPOSITORY_FORMAT, "format_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"path": str(bundle.path.resolve()), "id": bundle.content_id, "model": bundle.model.get("name")},
        "backend": plans[0].backend, "precision": plans[0].precision,
        "example": {"caption": EXAMPLE_CAPTION, "input_ids": bundle.tokenizer().encode_batch(
            [EXAMPLE_CAPTION], max_words=bundle.max_words)[0].tolist()},
        "models": {p.name: {"graph": p.graph, "source": dict(p.source), "model_file": p.model_file,
                            "max_batch_size": p.max_batch, "preferred_batch_size": p.preferred,
                            "batch_source": p.batch_source, "instances": p.instances,
                            "profile": list(p.profile) if p.profile else None,
                            "extra_files": [dict(e) for e in p.extra_files]} for p in plans},
    }


def write_repository(bundle: Bundle | str | os.PathLike, out: str | os.PathLike, backend: str = "onnxruntime",
                     precision: str | None = None, max_batch: int | None = None, instances: int = 1,
                     force: bool = False) -> Path:
    """Write and validate the repository; returns its path. `force` replaces an existing one."""
    from .readme import repository_readme
    from .validate import check_repository

    bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=False)
    out = Path(out)
    if out.exists() and not force:
        raise TritonRepositoryError(f"{out} exists; pass --force to replace it (the old one stays until the new one "
                                    "is written and valid)")
    plans = plan_models(bundle, backend, precision, max_batch, instances)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for plan in plans:
            version_dir = staging / plan.name / "1"
            version_dir.mkdir(parents=True)
            files = [(plan.source["file"], plan.source["sha256"], plan.model_file)]
            files += [(e["file"], e["sha256"], e["file"]) for e in plan.extra_files]
            for name, sha256, target in files:
                source = bundle.path / name
                if not source.is_file():
                    raise BundleError(f"{bundle.path}: {name} is listed in manifest.json but missing from the bundle "
                                      "(incomplete copy? copy the whole bundle directory or re-export it)")
                copy_verified(source, version_dir / target, sha256)
            atomic_write_text(staging / plan.name / "config.pbtxt", config_text(build_config(plan, bundle)), fsync=False)
        record = repository_record(bundle, plans)
        atomic_write_text(staging / REPOSITORY_FILE, json.dumps(record, indent=1) + "\n", fsync=False)
        atomic_write_text(staging / "README.md", repository_readme(record, plans, out), fsync=False)
        problems = check_repository(staging, bundle=bundle)
        if problems:
            raise TritonRepositoryError(f"the written repository failed validation ({len(problems)} problem(s)):\n  - "
                                        + "\n  - ".join(problems))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
