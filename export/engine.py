"""`ts2net engine`: strongly typed TensorRT engines from a bundle's FP16 graphs.

Kept thin on purpose: Polygraphy does the TensorRT plumbing (network from ONNX, profiles, timing
cache, build). Precision comes from the graph (strongly typed network), so the same code builds
the same engine on TensorRT 10 and 11 (11 has no FP16 builder flag). Everything around the build
(profile parsing, preflight checks, manifest update) is plain Python and unit-tested; the build
itself needs TensorRT and a GPU, and their absence is a clear error that leaves the manifest untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.bundle_format import GRAPHS, TIMING_CACHE_FILE, engine_file, file_entry

from . import manifest as mf

SUPPORTED_TRT_MAJOR = (10, 11)


class EngineBuildError(RuntimeError):
    """Engines cannot be built here; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def to_manifest(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


DEFAULT_PROFILES = {"text": BatchProfile(1, 16, 64), "video": BatchProfile(1, 4, 16)}


def parse_batch_profiles(specs: tuple[str, ...] | list[str]) -> dict[str, BatchProfile]:
    """`MIN,OPT,MAX` for both graphs or `GRAPH=MIN,OPT,MAX` per graph (repeatable)."""
    profiles = dict(DEFAULT_PROFILES)
    for spec in specs:
        graph, _, values = spec.rpartition("=")
        targets = [graph] if graph else list(GRAPHS)
        if graph and graph not in GRAPHS:
            raise ValueError(f"--batch {spec!r}: unknown graph {graph!r}; expected one of {GRAPHS}")
        try:
            numbers = [int(v) for v in values.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) != 3 or not 1 <= numbers[0] <= numbers[1] <= numbers[2]:
            raise ValueError(f"--batch {spec!r}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
        for target in targets:
            profiles[target] = BatchProfile(*numbers)
    return profiles


def input_shapes(graph_entry: dict[str, Any], batch: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes of a manifest graph entry at a given batch size."""
    return {t["name"]: tuple(batch if isinstance(d, str) else d for d in t["shape"]) for t in graph_entry["inputs"]}


def gpu_facts() -> dict[str, str]:
    """Name and compute capability of GPU 0 (the project's one GPU probe, `runtime.gpu.gpus`)."""
    from runtime import gpu

    found = gpu.gpus()
    if not found:
        raise EngineBuildError("no NVIDIA GPU is visible (nvidia-smi is missing or found none, and the CUDA driver "
                               "library found none): TensorRT engines are built on the GPU that will run them")
    return {"name": found[0]["name"], "compute_capability": found[0]["compute_capability"]}


def import_tensorrt():
    """The tensorrt module, checked by the project's one TensorRT import check plus the major version."""
    from runtime.gpu import tensorrt_status

    version, reason = tensorrt_status()
    if version is None:
        raise EngineBuildError(reason)
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_TRT_MAJOR:
        raise EngineBuildError(f"TensorRT {trt.__version__} found; engines need TensorRT "
                               f"{' or '.join(map(str, SUPPORTED_TRT_MAJOR))}.x")
    return trt


def build_engine(onnx_path: Path, graph_entry: dict[str, Any], profile: BatchProfile, plan_path: Path,
                 workspace_mb: int | None, timing_cache: Path | None, optimization_level: int | None) -> None:
    """One strongly typed engine through Polygraphy's loaders (TensorRT imported lazily)."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile, engine_from_network, save_engine

    trt_profile = Profile()
    for name, shape in input_shapes(graph_entry, profile.min).items():
        trt_profile.add(name, min=shape, opt=input_shapes(graph_entry, profile.opt)[name],
                        max=input_shapes(graph_entry, profile.max)[name])
    config_args: dict[str, Any] = {"profiles": [trt_profile]}
    if workspace_mb:
        config_args["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: workspace_mb << 20}
    if timing_cache is not None:
        config_args["load_timing_cache"] = str(timing_cache)
    if optimization_level is not None:
        config_args["builder_optimization_level"] = optimization_level
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    engine = engine_from_network(network, config=CreateConfig(**config_args),
                                 save_timing_cache=str(timing_cache) if timing_cache else None)
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    save_engine(engine, str(tmp))
    tmp.replace(plan_path)


def _open_verified(bundle: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """(a copy of the manifest, FP16 graph path per graph), read through the verifying reader.

    The schema is checked and each FP16 graph (and its external data) is checked against its sha256
    before anything is built, so an engine is never built from a swapped or truncated graph.
    """
    from runtime.bundle import BundleError, open_bundle

    try:
        opened = open_bundle(bundle, verify=False, allow_invalid=True)
        if not opened.valid:
            raise EngineBuildError(f"{bundle}: the bundle is marked invalid (FP32 validation failed); "
                                   "re-export it first")
        sources = {graph: opened.graph_path(graph, "fp16") for graph in GRAPHS}
    except BundleError as exc:
        raise EngineBuildError(str(exc)) from exc
    return copy.deepcopy(dict(opened.manifest)), sources


def build_engines(bundle: str | Path, profiles: dict[str, BatchProfile] | None = None, workspace_mb: int | None = None,
                  timing_cache: str | Path | None = None, optimization_level: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Build `text.plan` and `video.plan`; record the build facts in the manifest. Returns the entries."""
    bundle = Path(bundle)
    manifest, sources = _open_verified(bundle)
    profiles = profiles or dict(DEFAULT_PROFILES)
    # preflight before touching anything: TensorRT, Polygraphy, GPU
    trt = import_tensorrt()
    gpu = gpu_facts()
    cache = Path(timing_cache) if timing_cache else bundle / TIMING_CACHE_FILE
    entries = {}
    from tqdm import tqdm

    for graph in tqdm(GRAPHS, desc="engines", disable=not progress):
        fp16 = manifest["graphs"][graph]["fp16"]
        plan = bundle / engine_file(graph)
        build_engine(sources[graph], fp16, profiles[graph], plan, workspace_mb, cache, optimization_level)
        entries[graph] = file_entry(bundle, plan.name, precision="fp16 (strongly typed from the FP16 graph)",
                                    built_from=fp16["file"], tensorrt_version=trt.__version__, gpu=gpu,
                                    profile=profiles[graph].to_manifest(), inputs=fp16["inputs"],
                                    outputs=fp16["outputs"], builder_optimization_level=optimization_level,
                                    workspace_mb=workspace_mb, timing_cache=str(cache))
    manifest["engines"] = entries
    mf.write_manifest(bundle, manifest)
    return entries
