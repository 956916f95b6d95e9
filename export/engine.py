"""`ts2net engine`: strongly typed TensorRT engines from a bundle's FP16 graphs.

Kept thin on purpose: Polygraphy does the TensorRT plumbing (network from ONNX, profiles, timing
cache, build). Precision comes from the graph (strongly typed network), so the same code builds
the same engine on TensorRT 10 and 11 (11 has no FP16 builder flag). Everything around the build
(profile parsing, preflight checks, manifest update) is plain Python and unit-tested; the build
itself needs TensorRT and a GPU, and their absence is a clear error that leaves the manifest untouched.

A rebuild is all or nothing: both plans are built to temporary files, and only when both exist are
they moved into place and the manifest rewritten, so a failed video build never leaves a manifest
whose text.plan checksum no longer matches. The bundle is opened through the verifying reader
(`runtime.bundle.open_bundle`): an FP16 graph whose sha256 does not match its manifest entry is
refused before TensorRT sees it.

The timing cache (TensorRT's measured tactic timings) is tied to one TensorRT release and one GPU
architecture, and it changes on every build, so it does not belong in the checksummed bundle: it
lives in the user's cache directory, named by TensorRT version and compute capability
(`timing-trt10.9.0-sm90.cache`), and the manifest records which file was used.
"""
from __future__ import annotations

import copy
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.bundle_format import GRAPHS, engine_file, file_entry

from . import manifest as mf

SUPPORTED_TRT_MAJOR = (10, 11)
# Polygraphy before 0.53.4 reads `ILayer.precision_is_set`, gone in TensorRT 11 (CreateConfig fails
# on every build), and does not find a pip-installed CUDA runtime (site-packages/nvidia/cuda_runtime).
POLYGRAPHY_MIN_FOR_TRT11 = (0, 53, 4)



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
    """Name and compute capability of CUDA device 0, the one TensorRT builds for (driver API first)."""
    from runtime.gpu import cuda_device_zero

    device = cuda_device_zero()
    if device is None:
        raise EngineBuildError("no NVIDIA GPU found (the CUDA driver library libcuda.so.1 reports none, and "
                               "nvidia-smi is missing or lists none; check CUDA_VISIBLE_DEVICES): TensorRT "
                               "engines are built on the GPU that will run them")
    return {"name": device["name"], "compute_capability": device["compute_capability"]}


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_polygraphy(trt_version: str, polygraphy_version: str) -> None:
    """Refuse a Polygraphy too old for this TensorRT (see POLYGRAPHY_MIN_FOR_TRT11)."""
    if _version_tuple(trt_version)[0] >= 11 and _version_tuple(polygraphy_version) < POLYGRAPHY_MIN_FOR_TRT11:
        floor = ".".join(map(str, POLYGRAPHY_MIN_FOR_TRT11))
        raise EngineBuildError(f"Polygraphy {polygraphy_version} cannot build with TensorRT {trt_version} (it reads "
                               f"ILayer.precision_is_set, removed in TensorRT 11); pip install 'polygraphy>={floor}'")


def default_timing_cache(trt_version: str, compute_capability: str) -> Path:
    """Per-user timing cache for one TensorRT release and one GPU architecture."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    version = ".".join(map(str, _version_tuple(trt_version)))
    sm = str(compute_capability).replace(".", "")
    return Path(base) / "ts2net-deploy" / "tensorrt" / f"timing-trt{version}-sm{sm}.cache"


def _remove_stale_lock(cache: Path) -> None:
    """Polygraphy guards the timing cache with `<cache>.lock` and leaves it behind; remove it
    when no other build holds it (a held lock is left alone)."""
    lock = cache.with_name(cache.name + ".lock")
    try:
        handle = open(lock, "rb")
    except OSError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        lock.unlink(missing_ok=True)


def import_tensorrt():
    """The tensorrt module, checked by the project's one TensorRT import check, the major version and
    the Polygraphy floor for TensorRT 11."""
    from runtime.gpu import tensorrt_status

    version, reason = tensorrt_status()
    if version is None:
        raise EngineBuildError(reason)
    import polygraphy
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_TRT_MAJOR:
        raise EngineBuildError(f"TensorRT {trt.__version__} found; engines need TensorRT "
                               f"{' or '.join(map(str, SUPPORTED_TRT_MAJOR))}.x")
    check_polygraphy(trt.__version__, polygraphy.__version__)
    return trt


def engine_loaders(trt, onnx_path: Path, graph_entry: dict[str, Any], profile: BatchProfile,
                   workspace_mb: int | None, timing_cache: Path | None, optimization_level: int | None):
    """Polygraphy's (network, config) loaders for one strongly typed engine; nothing runs yet.

    Constructing them needs no TensorRT (`tests/test_engine.py` builds them on CPU with these very
    arguments), so a renamed Polygraphy keyword fails there and not on the user's GPU.
    """
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile

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
    return network, CreateConfig(**config_args)


def build_engine(onnx_path: Path, graph_entry: dict[str, Any], profile: BatchProfile, plan_path: Path,
                 workspace_mb: int | None, timing_cache: Path | None, optimization_level: int | None) -> None:
    """One strongly typed engine written to `plan_path`; Polygraphy failures become EngineBuildError."""
    trt = import_tensorrt()
    from polygraphy.backend.trt import engine_from_network, save_engine
    from polygraphy.exception import PolygraphyException

    network, config = engine_loaders(trt, onnx_path, graph_entry, profile, workspace_mb, timing_cache,
                                     optimization_level)
    try:
        engine = engine_from_network(network, config=config,
                                     save_timing_cache=str(timing_cache) if timing_cache else None)
        save_engine(engine, str(plan_path))
    except PolygraphyException as exc:
        raise EngineBuildError(f"{onnx_path.name}: TensorRT could not parse or build this graph ({exc})") from exc


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
    cache = Path(timing_cache) if timing_cache else default_timing_cache(trt.__version__, gpu["compute_capability"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    staged = {graph: bundle / f".{graph}.plan.building" for graph in GRAPHS}
    entries = {}
    try:
        for graph in tqdm(GRAPHS, desc="engines", disable=not progress):
            fp16 = manifest["graphs"][graph]["fp16"]
            build_engine(sources[graph], fp16, profiles[graph], staged[graph], workspace_mb, cache, optimization_level)
            entries[graph] = file_entry(
                bundle, staged[graph].name, precision="fp16", typing="strongly typed from the FP16 graph",
                built_from=fp16["file"], tensorrt_version=trt.__version__, gpu=gpu,
                profile=profiles[graph].to_manifest(), inputs=fp16["inputs"], outputs=fp16["outputs"],
                builder_optimization_level=optimization_level, workspace_mb=workspace_mb,
                timing_cache={"path": str(cache), "tensorrt_version": trt.__version__,
                              "compute_capability": gpu["compute_capability"],
                              "note": "outside the bundle, not checksummed: it only speeds up rebuilds"})
            entries[graph]["file"] = engine_file(graph)
        # both plans built: commit them and the manifest together
        for graph in GRAPHS:
            staged[graph].replace(bundle / engine_file(graph))
        manifest["engines"] = entries
        mf.write_manifest(bundle, manifest)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
        _remove_stale_lock(cache)
    return entries
