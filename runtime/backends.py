"""Backends: one interface over ONNX Runtime (CPU, CUDA) and TensorRT for a bundle's graphs.

Shaped like Polygraphy's runners: `infer` first checks the feed against the graph's I/O
contract from the manifest (names, dtypes, shapes, with the named dynamic axis "batch" free) and
only then calls the backend's `_infer_impl`. A wrong feed is one `InputValidationError` that lists
every bad input with what was expected and what was received, instead of an engine-specific
message about the first one. Heavy libraries (onnxruntime, tensorrt, polygraphy) are imported
inside the backend that needs them, so `import runtime.backends` is cheap and works without them.
"""
from __future__ import annotations

import abc
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from .bundle import Bundle, BundleError, open_bundle
from .gpu import tensorrt_status

log = logging.getLogger(__name__)

BACKENDS = ("ort-cpu", "ort-cuda", "tensorrt", "openvino")
# precisions each backend can be asked for (TensorRT: the one its engine was built with)
BACKEND_PRECISIONS = {"ort-cpu": ("fp32", "fp16", "int8"), "ort-cuda": ("fp32", "fp16", "int8"),
                      "tensorrt": ("fp16",), "openvino": ("fp32", "bf16", "int8")}

ORT_GPU_INSTALL_HINT = ("install `onnxruntime-gpu` instead of `onnxruntime` (pip uninstall onnxruntime; "
                        "pip install 'ts2net-deploy[gpu]'), with the CUDA and cuDNN versions it was built for")


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (library, provider, GPU or engine missing); the message says how to fix it."""


class InputValidationError(ValueError):
    """The feed does not match the graph's inputs; `problems` lists each bad input."""

    def __init__(self, label: str, problems: list[str], expected: str):
        self.problems = problems
        super().__init__(f"{label}: {len(problems)} problem(s) with the inputs:\n  - " + "\n  - ".join(problems)
                         + f"\nexpected inputs: {expected}")


# ------------------------------------------------------------------------------ input checking
def describe_spec(spec: Mapping[str, Any]) -> str:
    return f"{spec['dtype']} [{', '.join(str(d) for d in spec['shape'])}]"


def _describe_array(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} [{', '.join(str(d) for d in value.shape)}]"
    return f"{type(value).__name__} (not a numpy array)"


def feed_problems(feed: Any, specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every mismatch of `feed` against tensor specs: names, dtypes, ranks, fixed dims, dynamic axes.

    A named dynamic axis matches any positive size, but must have the same size in every input
    where it appears (frames and frame_mask must agree on the batch).
    """
    specs = list(specs)
    if not isinstance(feed, Mapping):
        return [f"the feed must be a dict of input name -> numpy array, got {type(feed).__name__}"]
    problems: list[str] = []
    expected_names = [s["name"] for s in specs]
    axis_sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        name = spec["name"]
        if name not in feed:
            problems.append(f"{name}: missing; expected {describe_spec(spec)}")
            continue
        value = feed[name]
        wrong = []
        if not isinstance(value, np.ndarray):
            problems.append(f"{name}: expected {describe_spec(spec)}, received {_describe_array(value)}")
            continue
        if value.dtype != np.dtype(spec["dtype"]):
            wrong.append("dtype")
        shape = spec["shape"]
        if value.ndim != len(shape):
            wrong.append(f"rank {value.ndim} != {len(shape)}")
        else:
            for axis, (want, got) in enumerate(zip(shape, value.shape)):
                if isinstance(want, str):
                    if got < 1:
                        wrong.append(f"axis {axis} ({want}) is {got}, must be >= 1")
                    elif want in axis_sizes and axis_sizes[want][0] != got:
                        wrong.append(f"axis {axis} ({want}) is {got} but {axis_sizes[want][1]} has {want}="
                                     f"{axis_sizes[want][0]}")
                    else:
                        axis_sizes.setdefault(want, (got, name))
                elif want != got:
                    wrong.append(f"axis {axis} is {got}, must be {want}")
        if wrong:
            problems.append(f"{name}: expected {describe_spec(spec)}, received {_describe_array(value)} "
                            f"({'; '.join(wrong)})")
    for name in feed:
        if name not in expected_names:
            problems.append(f"{name}: unexpected input, received {_describe_array(feed[name])} "
                            f"(the graph's inputs are {expected_names})")
    return problems


# ------------------------------------------------------------------------------ the interface
class Backend(abc.ABC):
    """Runs one graph of a bundle. Use as a context manager, or call load() / close()."""

    kind = "abstract"

    def __init__(self, bundle: Bundle, graph: str, precision: str, io_precision: str | None = None):
        self.bundle = bundle
        self.graph = graph
        self.precision = precision
        entry = bundle.graph_entry(graph, io_precision or precision)
        self.input_specs = [dict(t) for t in entry["inputs"]]
        self.output_specs = [dict(t) for t in entry["outputs"]]
        self.last_latency_ms: float | None = None
        self._loaded = False

    @property
    def name(self) -> str:
        return f"{self.kind} {self.graph} {self.precision}"

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        return [s["name"] for s in self.output_specs]

    @property
    def max_batch(self) -> int | None:
        """Largest batch this backend accepts (an engine's profile), None when unbounded."""
        return None

    def load(self) -> "Backend":
        """Create the session / engine context (idempotent)."""
        if not self._loaded:
            self._load_impl()
            self._loaded = True
        return self

    def input_problems(self, feed: Any) -> list[str]:
        problems = feed_problems(feed, self.input_specs)
        return problems or self._extra_input_problems(feed)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feed` against the manifest's inputs, then run; returns output name -> array.

        `last_latency_ms` is the time of the backend call alone (not the checks), so benchmarks
        and callers see the same number.
        """
        problems = self.input_problems(feed)
        if problems:
            expected = ", ".join(f"{s['name']} {describe_spec(s)}" for s in self.input_specs)
            raise InputValidationError(f"{self.bundle.path.name}: {self.name}", problems, expected)
        self.load()
        start = time.perf_counter()
        outputs = self._infer_impl(dict(feed))
        self.last_latency_ms = (time.perf_counter() - start) * 1e3
        return outputs

    def close(self) -> None:
        if self._loaded:
            self._close_impl()
            self._loaded = False

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} of {self.bundle.path}>"

    # -------------------------------------------------------------- implementation hooks
    def _extra_input_problems(self, feed: Mapping[str, np.ndarray]) -> list[str]:
        """Backend-specific limits (e.g. an engine's batch range), checked after the manifest's."""
        return []

    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close_impl(self) -> None:
        pass


# ------------------------------------------------------------------------------ ONNX Runtime
def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}): pip install onnxruntime "
                                 "(or onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def ort_cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime can run on CUDA here, and why not."""
    try:
        ort = _import_ort()
    except BackendUnavailable as exc:
        return False, str(exc)
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, (f"the installed ONNX Runtime {ort.__version__} has no CUDAExecutionProvider (providers: "
                       f"{', '.join(providers)}): {ORT_GPU_INSTALL_HINT}")
    from .gpu import gpus

    if not gpus():
        return False, "onnxruntime-gpu is installed but no NVIDIA GPU is visible (nvidia-smi / libcuda found none)"
    return True, f"ONNX Runtime {ort.__version__} with CUDAExecutionProvider"


class OrtBackend(Backend):
    """A bundle graph in ONNX Runtime, FP32, FP16 or INT8 graph, on CPU or CUDA."""

    def __init__(self, bundle: Bundle, graph: str, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device={device!r}: expected 'cpu' or 'cuda'")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}: must be >= 1 (or None for ONNX Runtime's default)")
        if precision == "bf16":
            raise BackendUnavailable("ONNX Runtime has no bf16 path for these graphs (its CPU kernels have no BF16 "
                                     "GEMM): bf16 is an OpenVINO inference hint, use --backend openvino")
        if precision == "int8" and not bundle.has_graph(graph, "int8"):
            raise BackendUnavailable(f"ort-{device} int8 cannot run: {bundle.path} has no int8 {graph} graph "
                                     f"(graphs.{graph}.int8 missing from the manifest); add one with `ts2net quantize "
                                     f"--bundle {bundle.path}`")
        super().__init__(bundle, graph, precision)
        self.device = device
        self.kind = f"ort-{device}"
        self.threads = threads
        if device == "cuda":
            ok, reason = ort_cuda_status()
            if not ok:
                raise BackendUnavailable(f"ort-cuda cannot run: {reason}")
        self._session = None

    def _load_impl(self) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if self.device == "cuda":
            if hasattr(ort, "preload_dlls"):  # CUDA / cuDNN from the nvidia-* pip wheels, when present
                try:
                    ort.preload_dlls()
                except Exception as exc:  # noqa: BLE001 - only a hint; the provider check below decides
                    log.debug("onnxruntime.preload_dlls failed: %s", exc)
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        path = self.bundle.graph_path(self.graph, self.precision)
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise BackendUnavailable("ONNX Runtime fell back to the CPU: the CUDA provider failed to load (CUDA or "
                                     f"cuDNN libraries missing or of the wrong version?). {ORT_GPU_INSTALL_HINT}")
        found = sorted(i.name for i in session.get_inputs()), sorted(o.name for o in session.get_outputs())
        wanted = sorted(self.input_names), sorted(self.output_names)
        if found != wanted:
            raise BundleError(f"{path}: graph I/O {found} does not match the manifest's {wanted}")
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, feed)))

    def _close_impl(self) -> None:
        self._session = None


# ------------------------------------------------------------------------------ TensorRT
def tensorrt_gpus() -> list[dict[str, Any]]:
    """[CUDA device 0] as TensorRT sees it (driver API, nvidia-smi fallback), or [] without a GPU.

    The same probe `ts2net engine` records at build time, so build and compatibility check always
    describe the same device, whatever `CUDA_VISIBLE_DEVICES` selects.
    """
    from .gpu import cuda_device_zero

    device = cuda_device_zero()
    return [device] if device else []


def _version_key(version: str) -> tuple[str, ...]:
    """major.minor.patch: engines are tied to the TensorRT release that built them."""
    return tuple(str(version).split("+")[0].split(".")[:3])


def engine_compatibility(entry: Mapping[str, Any], tensorrt_version: str | None,
                         visible_gpus: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running an engine with this TensorRT on these GPUs.

    An engine only deserializes with the TensorRT release that built it and on GPUs of the same
    compute capability: those are errors. Another GPU *model* of the same compute capability runs
    (TensorRT itself only warns) but with tactics timed on a different chip, so it is a warning.
    """
    errors, warnings = [], []
    built = entry.get("tensorrt_version")
    if tensorrt_version is not None and built and _version_key(built) != _version_key(tensorrt_version):
        errors.append(f"{entry['file']} was built with TensorRT {built}, this is TensorRT {tensorrt_version}: "
                      "rebuild it here with `make engine`")
    gpu = entry.get("gpu") or {}
    gpu_list = list(visible_gpus)
    if not gpu_list:
        errors.append("no NVIDIA GPU is visible (libcuda / nvidia-smi found none; check CUDA_VISIBLE_DEVICES); "
                      "TensorRT engines need one")
    else:
        here = gpu_list[0]
        if str(gpu.get("compute_capability")) != str(here.get("compute_capability")):
            errors.append(f"{entry['file']} was built for compute capability {gpu.get('compute_capability')} "
                          f"({gpu.get('name')}), this GPU is {here.get('name')} with compute capability "
                          f"{here.get('compute_capability')}: rebuild it here with `make engine`")
        elif gpu.get("name") and gpu.get("name") != here.get("name"):
            warnings.append(f"{entry['file']} was built on {gpu.get('name')} and runs on {here.get('name')} (same "
                            "compute capability): it works, but rebuild it here for the best speed")
    return errors, warnings


def profile_batch_range(profile: Any, input_specs: list[Mapping[str, Any]]) -> tuple[int, int] | None:
    """(min, max) batch of an engine's optimization profile as recorded in the manifest.

    Accepts batch sizes ({"min": 1, "opt": 8, "max": 32}) or per-input shapes
    ({"min": {"frames": [1, 12, ...]}, ...} or {"frames": {"min": [...], ...}}).
    """
    if not isinstance(profile, Mapping):
        return None

    def batch_of(value: Any) -> int | None:
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and value:
            return int(value[0])
        if isinstance(value, Mapping):
            for spec in input_specs:
                if spec["name"] in value:
                    return batch_of(value[spec["name"]])
        return None

    if {"min", "max"} <= profile.keys():
        low, high = batch_of(profile["min"]), batch_of(profile["max"])
    else:
        per_input = next((profile[s["name"]] for s in input_specs if isinstance(profile.get(s["name"]), Mapping)), None)
        if per_input is None:
            return None
        low, high = batch_of(per_input.get("min")), batch_of(per_input.get("max"))
    return (low, high) if low is not None and high is not None else None


def pad_batch(feed: Mapping[str, np.ndarray], min_batch: int) -> tuple[dict[str, np.ndarray], int]:
    """`feed` with its batch axis padded up to `min_batch` by repeating the last item, and the real batch.

    An engine built with a profile MIN > 1 rejects smaller batches, yet an encoder's last chunk
    can be smaller; the rows are independent, so repeated rows change nothing and are dropped.
    """
    batch = next(iter(feed.values())).shape[0]
    if batch >= min_batch or batch == 0:
        return dict(feed), batch
    extra = min_batch - batch
    return {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in feed.items()}, batch


class TensorRTBackend(Backend):
    """A bundle's TensorRT engine (built by `make engine` from the FP16 graph), run with Polygraphy."""

    kind = "tensorrt"

    def __init__(self, bundle: Bundle, graph: str):
        version, reason = tensorrt_status()
        problems = [reason] if version is None else []
        if not bundle.has_engine(graph):
            problems.append(f"the bundle has no TensorRT engine for the {graph} graph: run `make engine` (or "
                            f"`ts2net engine --bundle {bundle.path}`) on the GPU that will serve it")
        if problems:
            raise BackendUnavailable("tensorrt cannot run:\n  - " + "\n  - ".join(problems))
        entry = bundle.engine_entry(graph)
        errors, warnings = engine_compatibility(entry, version, tensorrt_gpus())
        if errors:
            raise BackendUnavailable("tensorrt cannot run this engine:\n  - " + "\n  - ".join(errors))
        for warning in warnings:
            log.warning(warning)
        self.warnings = warnings
        precision = str(entry.get("precision", "fp16"))
        io_precision = precision if precision in bundle.manifest["graphs"][graph] else "fp32"
        super().__init__(bundle, graph, precision, io_precision=io_precision)
        self.engine_entry = entry
        self.tensorrt_version = version
        self._batch_range = profile_batch_range(entry.get("profile"), self.input_specs)
        self._runner = None

    @property
    def max_batch(self) -> int | None:
        return self._batch_range[1] if self._batch_range else None

    @property
    def min_batch(self) -> int:
        """Smallest batch of the engine's profile; smaller batches are padded (see _infer_impl)."""
        return self._batch_range[0] if self._batch_range else 1

    def _extra_input_problems(self, feed: Mapping[str, np.ndarray]) -> list[str]:
        if self._batch_range is None:
            return []
        low, high = self._batch_range
        batch = next(iter(feed.values())).shape[0]
        if batch < 1 or batch > high:
            return [f"batch {batch} is outside the engine's optimization profile {low}..{high} "
                    "(split the batch, or rebuild the engine with a larger profile)"]
        return []

    def _load_impl(self) -> None:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException

        path = self.bundle.engine_path(self.graph)
        try:
            runner = TrtRunner(EngineFromBytes(path.read_bytes()), name=f"ts2net-{self.graph}")
            runner.activate()
        except PolygraphyException as exc:
            raise BackendUnavailable(f"{path}: TensorRT could not deserialize the {self.graph} engine ({exc}); "
                                     "rebuild it here with `ts2net engine`") from exc
        self._runner = runner

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed, batch = pad_batch({k: np.ascontiguousarray(v) for k, v in feed.items()}, self.min_batch)
        outputs = self._runner.infer(feed, check_inputs=False)
        # Polygraphy reuses its output buffers between calls: hand out copies (without the padding).
        return {name: np.array(outputs[name][:batch], copy=True) for name in self.output_names}

    def _close_impl(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None


# ------------------------------------------------------------------------------ factory
@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str


def available_backends(bundle: Bundle | None = None) -> list[BackendStatus]:
    """Which backends can run here (and, given a bundle, run it), with the reason for the others."""
    statuses = []
    try:
        ort = _import_ort()
        ok = "CPUExecutionProvider" in ort.get_available_providers()
        statuses.append(BackendStatus("ort-cpu", ok, f"ONNX Runtime {ort.__version__}" if ok
                                      else "this ONNX Runtime build has no CPUExecutionProvider"))
    except BackendUnavailable as exc:
        statuses.append(BackendStatus("ort-cpu", False, str(exc)))
    statuses.append(BackendStatus("ort-cuda", *ort_cuda_status()))
    version, reason = tensorrt_status()
    if version is not None:
        problems = []
        if not tensorrt_gpus():
            problems.append("no NVIDIA GPU is visible")
        if bundle is not None:
            for graph in ("text", "video"):
                if not bundle.has_engine(graph):
                    problems.append(f"no {graph} engine in the bundle (run `make engine`)")
                else:
                    problems += engine_compatibility(bundle.engine_entry(graph), version, tensorrt_gpus())[0]
        reason = "; ".join(problems) if problems else f"TensorRT {version}"
        statuses.append(BackendStatus("tensorrt", not problems, reason))
    else:
        statuses.append(BackendStatus("tensorrt", False, reason))
    from .openvino_backend import precision_status

    statuses.append(BackendStatus("openvino", *precision_status("fp32")))
    return statuses


def default_precision(bundle: Bundle, backend: str) -> str:
    """The precision a command runs when the user names none: the engine's for TensorRT, else FP32.

    An engine has exactly one precision (its FP16 graph's), so `eval` / `index` with
    `--backend tensorrt` must key caches and reports by it, not by the FP32 default of ONNX Runtime.
    """
    if backend == "tensorrt" and bundle.has_engine("text"):
        return str(bundle.engine_entry("text").get("precision", "fp16"))
    return "fp32"


def create_backend(bundle: Bundle | str | os.PathLike, graph: str, backend: str = "ort-cpu",
                   precision: str | None = None, threads: int | None = None) -> Backend:
    """A backend for one graph of a bundle (not loaded yet; `with` it or call load()).

    precision: "fp32", "fp16" or "int8" graph for ONNX Runtime; "fp32", "bf16" (inference hint on the
    FP32 graph) or "int8" for OpenVINO (default fp32). TensorRT runs the precision its engine was
    built with (fp16); asking it for another one is an error, not a silent swap.
    """
    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle)
    if graph not in ("text", "video"):
        raise ValueError(f"graph={graph!r}: expected 'text' or 'video'")
    if backend in ("ort-cpu", "ort-cuda"):
        return OrtBackend(bundle, graph, precision or "fp32", device=backend[4:], threads=threads)
    if backend == "openvino":
        from .openvino_backend import OpenVINOBackend

        return OpenVINOBackend(bundle, graph, precision or "fp32", threads=threads)
    if backend == "tensorrt":
        result = TensorRTBackend(bundle, graph)
        if precision is not None and precision != result.precision:
            raise BundleError(f"the {graph} engine of {bundle.path} is {result.precision}; TensorRT runs the precision "
                              f"its engine was built with, not {precision}")
        return result
    raise ValueError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
