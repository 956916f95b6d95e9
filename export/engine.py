"""`ts2net engine`: strongly typed TensorRT engines from a bundle's FP16 graphs.

Kept thin on purpose: Polygraphy does the TensorRT plumbing (network from ONNX, profiles, timing
cache, build). Precision comes from the graph (strongly typed network), so the same code builds
the same engine on TensorRT 10 and 11 (11 has no FP16 builder flag). Everything around the build
(profile parsing, preflight checks, manifest update) is plain Python and unit-tested; the build
itself needs TensorRT and a GPU, and their absence is a clear error that leaves the manifest untouched.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import manifest as mf

GRAPHS = ("text", "video")
SUPPORTED_TRT_MAJOR = (10, 11)
INSTALL_HINT = ("install TensorRT 10.x or 11.x with its Python bindings and Polygraphy "
                "(pip install 'ts2net-deploy[tensorrt]' installs NVIDIA's wheels; they need a CUDA driver)")


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
    """Name and compute capability of GPU 0 (nvidia-smi ships with every NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        raise EngineBuildError("no NVIDIA GPU driver found (nvidia-smi is missing): TensorRT engines are built "
                               "on the GPU that will run them")
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, check=False)
    line = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else ""
    if not line:
        raise EngineBuildError(f"nvidia-smi found no GPU ({query.stderr.strip() or 'no output'})")
    name, capability = (part.strip() for part in line.split(",", 1))
    return {"name": name, "compute_capability": capability}


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise EngineBuildError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_TRT_MAJOR:
        raise EngineBuildError(f"TensorRT {trt.__version__} found; engines need TensorRT "
                               f"{' or '.join(map(str, SUPPORTED_TRT_MAJOR))}.x")
    try:
        import polygraphy  # noqa: F401
    except ImportError as exc:
        raise EngineBuildError(f"Polygraphy is not installed ({exc}); pip install polygraphy") from exc
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


def build_engines(bundle: str | Path, profiles: dict[str, BatchProfile] | None = None, workspace_mb: int | None = None,
                  timing_cache: str | Path | None = None, optimization_level: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Build `text.plan` and `video.plan`; record the build facts in the manifest. Returns the entries."""
    bundle = Path(bundle)
    manifest = mf.read_manifest(bundle)
    if not manifest.get("valid"):
        raise EngineBuildError(f"{bundle}: the bundle is marked invalid (FP32 validation failed); re-export it first")
    profiles = profiles or dict(DEFAULT_PROFILES)
    # preflight before touching anything: TensorRT, Polygraphy, GPU
    trt = import_tensorrt()
    gpu = gpu_facts()
    cache = Path(timing_cache) if timing_cache else bundle / "timing.cache"
    entries = {}
    from tqdm import tqdm

    for graph in tqdm(GRAPHS, desc="engines", disable=not progress):
        fp16 = manifest["graphs"][graph]["fp16"]
        plan = bundle / f"{graph}.plan"
        build_engine(bundle / fp16["file"], fp16, profiles[graph], plan, workspace_mb, cache, optimization_level)
        entries[graph] = mf.file_entry(bundle, plan.name, precision="fp16", typing="strongly typed from the FP16 graph",
                                       built_from=fp16["file"], tensorrt_version=trt.__version__, gpu=gpu,
                                       profile=profiles[graph].to_manifest(), inputs=fp16["inputs"],
                                       outputs=fp16["outputs"], builder_optimization_level=optimization_level,
                                       workspace_mb=workspace_mb, timing_cache=str(cache))
    manifest["engines"] = entries
    mf.write_manifest(bundle, manifest)
    return entries
