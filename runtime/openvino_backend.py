"""OpenVINO CPU backend: a bundle's graphs in FP32, BF16 (AMX / AVX512-BF16) or INT8.

Why OpenVINO on CPUs: its CPU plugin runs BF16 on AMX tiles and INT8 on AMX / VNNI, where
ONNX Runtime's CPU kernels have no BF16 GEMM at all. The three precisions map to bundle files so:

- ``fp32``: the bundle's FP32 ONNX graph, ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's default
  hint on a BF16-capable CPU is bf16, so the hint is always set: "fp32" must mean FP32.
- ``bf16``: the same FP32 graph with ``INFERENCE_PRECISION_HINT=bf16`` (no file of its own; the
  C++ consumer does the same). Refused where the CPU does not list BF16 in OpenVINO's
  ``OPTIMIZATION_CAPABILITIES`` (e.g. AVX2-only AMD EPYC): OpenVINO would silently run FP32.
- ``int8``: the bundle's INT8 graph (``graphs.<g>.int8``), its OpenVINO IR form when the manifest
  records one (the form NNCF made, fastest on OpenVINO), else its ONNX file. The non-quantized
  parts (token selector, LayerNorm, Softmax) run with the f32 hint, as they were validated.

Batch handling: OpenVINO's CPU plugin is fastest on static shapes, so the model is reshaped to
each batch size it is fed and one compiled model per batch size is kept (a small LRU cache), which
a serving loop with a fixed batch and a remainder batch compiles exactly twice.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np

from .backends import Backend, BackendUnavailable
from .bundle import Bundle, BundleError

log = logging.getLogger(__name__)

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
OPENVINO_INSTALL_HINT = "pip install 'ts2net-deploy[openvino]' (or pip install openvino)"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
COMPILED_CACHE_SIZE = 4  # compiled models kept per backend (one per batch size seen)


def import_openvino():
    """The openvino module, or BackendUnavailable saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed ({exc}): {OPENVINO_INSTALL_HINT}") from exc
    return openvino


@lru_cache(maxsize=1)
def _core():
    return import_openvino().Core()


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU device (e.g. FP32, BF16, INT8)."""
    return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_name() -> str:
    return str(_core().get_property("CPU", "FULL_DEVICE_NAME"))


def precision_status(precision: str) -> tuple[bool, str]:
    """Whether OpenVINO can run `precision` on this CPU, and why not."""
    try:
        openvino = import_openvino()
        capabilities = cpu_capabilities()
    except BackendUnavailable as exc:
        return False, str(exc)
    if precision == "bf16" and "BF16" not in capabilities:
        return False, (f"this CPU ({cpu_name()}) does not report BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES "
                       f"({', '.join(capabilities)}): BF16 needs AVX512-BF16 or AMX (Intel Cooper Lake / Sapphire "
                       "Rapids or later, AMD Zen 4 or later); use precision int8 or fp32 here")
    if precision not in OPENVINO_PRECISIONS:
        return False, f"precision {precision!r}: OpenVINO runs {list(OPENVINO_PRECISIONS)}"
    return True, f"OpenVINO {openvino.get_version()} CPU ({', '.join(capabilities)})"


class OpenVINOBackend(Backend):
    """One bundle graph compiled by OpenVINO for the CPU at fp32, bf16 or int8."""

    kind = "openvino"

    def __init__(self, bundle: Bundle, graph: str, precision: str = "fp32", threads: int | None = None):
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision={precision!r}: the openvino backend runs {list(OPENVINO_PRECISIONS)}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}: must be >= 1 (or None for OpenVINO's default)")
        ok, reason = precision_status(precision)
        if not ok:
            raise BackendUnavailable(f"openvino {precision} cannot run: {reason}")
        graph_precision = "int8" if precision == "int8" else "fp32"
        if not bundle.has_graph(graph, graph_precision):
            raise BackendUnavailable(
                f"openvino int8 cannot run: {bundle.path} has no int8 {graph} graph (graphs.{graph}.int8 missing "
                f"from the manifest); add one with `ts2net quantize --bundle {bundle.path}` or re-export with "
                "`ts2net export` (which writes INT8 graphs unless --no-int8)")
        super().__init__(bundle, graph, precision, io_precision=graph_precision)
        self.graph_precision = graph_precision
        self.threads = threads
        self._model = None
        self._compiled: OrderedDict[int, Any] = OrderedDict()
        self.source_file: str | None = None

    def _config(self) -> dict[str, Any]:
        config = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _load_impl(self) -> None:
        core = _core()
        ir = self.bundle.openvino_ir_paths(self.graph, self.graph_precision)
        if ir is not None:
            model = core.read_model(str(ir[0]), str(ir[1]))
            self.source_file = ir[0].name
        else:
            path = self.bundle.graph_path(self.graph, self.graph_precision)
            model = core.read_model(str(path))
            self.source_file = path.name
        found = sorted(p.get_any_name() for p in model.inputs), sorted(p.get_any_name() for p in model.outputs)
        wanted = sorted(self.input_names), sorted(self.output_names)
        if found != wanted:
            raise BundleError(f"{self.bundle.path / self.source_file}: graph I/O {found} does not match the "
                              f"manifest's {wanted}")
        self._model = model

    def _compiled_for(self, batch: int):
        """The compiled model for a batch size: reshape the graph's "batch" axis, compile once, keep it."""
        if batch in self._compiled:
            self._compiled.move_to_end(batch)
            return self._compiled[batch]
        openvino = import_openvino()
        model = self._model.clone()
        shapes = {}
        for spec in self.input_specs:
            dims = [batch if isinstance(d, str) else int(d) for d in spec["shape"]]
            shapes[spec["name"]] = openvino.PartialShape(dims)
        model.reshape(shapes)
        compiled = _core().compile_model(model, "CPU", self._config())
        request = compiled.create_infer_request()
        outputs = [(port.get_any_name(), port) for port in compiled.outputs]
        self._compiled[batch] = (compiled, request, outputs)
        while len(self._compiled) > COMPILED_CACHE_SIZE:
            self._compiled.popitem(last=False)
        return self._compiled[batch]

    def compiled_precision(self, batch: int = 1) -> str:
        """The inference precision the compiled model reports (what OpenVINO actually chose)."""
        compiled, _, _ = self._compiled_for(batch)
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.to_string() if hasattr(value, "to_string") else str(value)  # an openvino.Type: "f32", "bf16"

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = int(next(iter(feed.values())).shape[0])
        _, request, outputs = self._compiled_for(batch)
        request.infer({name: np.ascontiguousarray(value) for name, value in feed.items()})
        result = {}
        for name, port in outputs:
            spec = next(s for s in self.output_specs if s["name"] == name)
            # OpenVINO may compute integer outputs in i32; the manifest's contract names the dtype
            result[name] = np.array(request.get_tensor(port).data, dtype=spec["dtype"], copy=True)
        return result

    def _close_impl(self) -> None:
        self._compiled.clear()
        self._model = None
