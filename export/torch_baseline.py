"""The PyTorch eager baseline of a bundle's model, for `ts2net bench` (imports torch, so it lives here).

The command line (cli/bench.py) hands `baseline_loader(...)` to `runtime.benchmark.run_bench` when torch
is importable; the runtime itself never imports torch or this package. A baseline is only a baseline
of *this* bundle if it is the same model, so the model is checked against the bundle's reference
outputs (FP32 parity row) before it is timed: a wrong --torch-checkpoint is refused instead of
producing a meaningless speed ratio.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import ts2net

# Config fields an export may override on top of a checkpoint's inferred sizes.
_OVERRIDABLE = ("max_frames", "max_words", "frame_mask_mode", "top_k", "token_shift", "token_selection",
                "shift_layers", "shift_fold_div", "frame_softmax_factor")


class TorchBaselineUnavailable(RuntimeError):
    """No PyTorch model matching the bundle can be built here; the message says why."""


def _model_for(bundle, checkpoint: str | Path | None) -> tuple[ts2net.TS2Net, str]:
    manifest_model = bundle.model
    if checkpoint is not None:
        overrides = {k: manifest_model[k] for k in _OVERRIDABLE if k in manifest_model}
        return ts2net.load_model(checkpoint, **overrides), f"checkpoint {checkpoint}"
    from .exporter import default_model

    source = bundle.manifest.get("source_checkpoint") or {}
    model, default_source, _ = default_model()
    if source.get("name") == default_source.get("name") and source.get("sha256") == default_source.get("sha256"):
        return model, f"embedded default model ({default_source.get('name')})"
    raise TorchBaselineUnavailable(
        f"the bundle was exported from {source.get('name')!r}, which is not the embedded default model; "
        "pass --torch-checkpoint PATH to benchmark PyTorch eager")


def load_baseline_model(bundle, checkpoint: str | Path | None = None) -> tuple[ts2net.TS2Net, str]:
    """(eval-mode model, description), verified to reproduce the bundle's reference outputs."""
    from runtime.parity import compare_outputs

    model, description = _model_for(bundle, checkpoint)
    model = model.eval()
    ref = bundle.reference()
    with torch.inference_mode():
        text = model.encode_text(torch.from_numpy(ref["input_ids"])).numpy()
        frames, indices = model.encode_video(torch.from_numpy(ref["frames"]), torch.from_numpy(ref["frame_mask"]))
    produced = {"text_embeds": text, "frame_embeds": frames.numpy(), "frame_mask": ref["frame_mask"]}
    if indices is not None:
        produced["patch_indices"] = indices.numpy()
    result = compare_outputs(ref, produced, "fp32", **bundle.similarity_args)
    if not result.passed:
        raise TorchBaselineUnavailable(f"{description} does not reproduce the bundle's reference outputs (wrong "
                                       "checkpoint?): " + "; ".join(result.failures))
    return model, description


def torch_plans(precisions, compile_model: bool = False) -> list[tuple[str, str]]:
    """The PyTorch rows of a benchmark: eager FP32 always, eager BF16 autocast when bf16 rows are measured
    (what a user gets from a one-line change), torch.compile FP32 when asked."""
    plans = [("torch-eager", "fp32")]
    if "bf16" in precisions:
        plans.append(("torch-eager", "bf16"))
    if compile_model:
        plans.append(("torch-compile", "fp32"))
    return plans


class TorchRunner:
    """One graph of the model in PyTorch, with the backends' `infer` / `last_latency_ms` shape.

    precision "bf16" runs under ``torch.autocast("cpu", torch.bfloat16)`` (the one-line change a
    user makes); ``compiled`` wraps the encoder in ``torch.compile`` (the first call compiles, so
    the benchmark gives it one extra warm-up run).
    """

    def __init__(self, model: ts2net.TS2Net, graph: str, threads: int | None = None, precision: str = "fp32",
                 compiled: bool = False):
        if graph not in ("text", "video"):
            raise ValueError(f"graph={graph!r}: expected 'text' or 'video'")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}: the torch baseline runs fp32 or bf16 (autocast)")
        if threads:
            torch.set_num_threads(threads)
        self.model, self.graph, self.precision = model, graph, precision
        self.kind = "torch-compile" if compiled else "torch-eager"
        encode = model.encode_text if graph == "text" else model.encode_video
        self._encode = torch.compile(encode) if compiled else encode
        self.last_latency_ms: float | None = None

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            if self.graph == "text":
                out = {"text_embeds": self._encode(tensors["input_ids"])}
            else:
                frames, indices = self._encode(tensors["frames"], tensors["frame_mask"])
                out = {"frame_embeds": frames} if indices is None else {"frame_embeds": frames, "patch_indices": indices}
        self.last_latency_ms = (time.perf_counter() - start) * 1e3
        return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in out.items()}

    def load(self) -> "TorchRunner":
        return self

    def close(self) -> None:
        pass


def matmul_peak(sizes: tuple[int, ...], threads: int | None = None, min_runs: int = 3,
                min_seconds: float = 0.3, dtype: str = "fp32") -> dict[str, Any]:
    """GFLOP/s of torch.matmul on square FP32 (or BF16, oneDNN / AMX) matrices: the attainable peak of
    torch's own CPU kernels for that precision."""
    if threads:
        torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    per_size = {}
    for n in sizes:
        a, b = torch.randn(n, n).to(torch_dtype), torch.randn(n, n).to(torch_dtype)
        with torch.inference_mode():  # best of >= 3 runs: the first (cold) one is discarded by the min
            best, runs, spent = float("inf"), 0, 0.0
            while runs < min_runs or (spent < min_seconds and runs < 50):
                start = time.perf_counter()
                torch.matmul(a, b)
                elapsed = time.perf_counter() - start
                best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
        per_size[str(n)] = 2 * n ** 3 / best / 1e9
    return {"library": f"torch {torch.__version__} matmul (CPU)", "dtype": str(torch_dtype).split(".")[-1],
            "threads": threads,
            "gflops_by_size": per_size, "best_gflops": max(per_size.values())}


class EagerBaseline:
    """The `runtime.benchmark.Baseline` shape around a verified eval-mode model."""

    def __init__(self, model: ts2net.TS2Net):
        self.model = model

    def plans(self, precisions, compiled: bool = False) -> list[tuple[str, str]]:
        return torch_plans(precisions, compiled)

    def matmul_peak(self, sizes: tuple[int, ...], threads: int | None, dtype: str = "fp32") -> dict[str, Any]:
        return matmul_peak(sizes, threads, dtype=dtype)

    def runner(self, graph: str, threads: int | None, precision: str = "fp32", compiled: bool = False) -> TorchRunner:
        return TorchRunner(self.model, graph, threads, precision=precision, compiled=compiled)


def baseline_loader(checkpoint: str | Path | None = None):
    """(bundle, threads) -> (EagerBaseline, description), or (None, why no matching model can be built)."""
    def load(bundle, threads):
        try:
            model, description = load_baseline_model(bundle, checkpoint)
        except TorchBaselineUnavailable as exc:
            return None, str(exc)
        return EagerBaseline(model), description
    return load
