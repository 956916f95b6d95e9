"""Parity of a bundle's outputs against PyTorch FP32 reference outputs (thresholds: docs/runtime.md, "Parity thresholds").

One function computes every figure for one precision row and lists *every* failing check at
once; export validation and `ts2net parity` both use it, so "the same answers" is defined once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .frame_similarity import similarity
from .reports import format_number

# The parity table (docs/runtime.md, "Parity thresholds"). Keys: precision row -> check -> bound.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"cosine_min": 0.99999, "max_abs_err": 1e-4, "selection_agreement": 1.0,
             "similarity_max_abs_err": 1e-3, "ranking_identical": 1.0},
    "fp16": {"cosine_mean": 0.999, "cosine_min": 0.99, "selection_agreement": 0.98,
             "top1_agreement": 0.98, "r1_delta_abs": 0.5},
}
# BF16 (OpenVINO hint on the FP32 graph) and INT8 (quantized graphs): the embeddings and token
# selection are gated on the reference inputs; the retrieval answers are gated on real data only
# (`real_*` keys, `ts2net parity --csv --videos`): top-1 video identical to FP32 for >= 97% of the
# queries and |delta R@1|, |delta R@5| <= 1 point, text-to-video and video-to-text. Six reference
# captions are too few for a top-1 rate (one flip is 17%), so no top-1 gate applies to them.
REDUCED_PRECISION_ROW = {"cosine_mean": 0.995, "cosine_min": 0.99, "selection_agreement": 0.95,
                         "real_top1_agreement": 0.97, "real_r1_delta_abs": 1.0, "real_r5_delta_abs": 1.0}
THRESHOLDS["bf16"] = dict(REDUCED_PRECISION_ROW)
THRESHOLDS["int8"] = dict(REDUCED_PRECISION_ROW)


@dataclass
class ParityResult:
    precision: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "passed": self.passed, "thresholds": THRESHOLDS[self.precision],
                "figures": self.figures, "failures": self.failures}

    def to_markdown(self, title: str) -> str:
        lines = [f"### {title} ({self.precision}): {'PASS' if self.passed else 'FAIL'}", "",
                 "| output | figure | value |", "|---|---|---|"]
        for output, figures in self.figures.items():
            if isinstance(figures, Mapping):
                for name, value in figures.items():
                    lines.append(f"| {output} | {name} | {_fmt(value)} |")
            else:
                lines.append(f"| - | {output} | {_fmt(figures)} |")
        if self.failures:
            lines += ["", "Failures:", *[f"- {f}" for f in self.failures]]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return format_number(value, ".9g", missing="None")  # cosines differ from 1 only in the 7th-9th digit


def embedding_figures(reference: np.ndarray, produced: np.ndarray) -> dict[str, float]:
    """Row-wise cosine (last axis) and absolute errors of one embedding output."""
    ref = reference.astype(np.float64).reshape(-1, reference.shape[-1])
    out = produced.astype(np.float64).reshape(-1, produced.shape[-1])
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = np.sum(ref * out, axis=1) / np.maximum(norms, 1e-30)
    err = np.abs(ref - out)
    return {"cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
            "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "reference_max_abs": float(np.abs(ref).max())}


def non_finite_problems(arrays: Mapping[str, np.ndarray], where: str) -> list[str]:
    """One line per floating array holding NaN or infinity: how many values, and the first index."""
    problems = []
    for name, value in arrays.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = ~np.isfinite(value)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(f"{where} {name}: {int(bad.sum())} non-finite values (NaN/inf), first at index {first}")
    return problems


def compare_outputs(reference: Mapping[str, np.ndarray], produced: Mapping[str, np.ndarray], precision: str,
                    *, logit_scale: float, frame_mask_mode: str, tokens_per_frame: int,
                    softmax_factor: float = 4.0) -> ParityResult:
    """Compare `produced` (a backend's outputs on the reference inputs) with `reference`.

    Both mappings hold `text_embeds`, `frame_embeds`, `frame_mask` and optionally `patch_indices`.
    """
    if precision not in THRESHOLDS:
        raise ValueError(f"precision={precision!r}: expected one of {sorted(THRESHOLDS)}")
    limits = THRESHOLDS[precision]
    result = ParityResult(precision)
    names = ("text_embeds", "frame_embeds")
    result.failures += non_finite_problems({n: reference[n] for n in names if n in reference}, "reference")
    result.failures += non_finite_problems({n: produced[n] for n in names if n in produced}, "produced")
    for name in ("text_embeds", "frame_embeds"):
        if name not in produced:
            result.failures.append(f"{name}: missing from the produced outputs")
            continue
        if produced[name].shape != reference[name].shape:
            result.failures.append(f"{name}: shape {produced[name].shape} != reference {reference[name].shape}")
            continue
        figures = embedding_figures(reference[name], produced[name])
        if name == "frame_embeds":  # padded frames never reach the similarity; report real frames too
            real = reference["frame_mask"].astype(bool)
            figures.update({f"real_frames_{k}": v for k, v in
                            embedding_figures(reference[name][real], produced[name][real]).items()
                            if k.startswith("cosine")})
        result.figures[name] = figures
        if not figures["cosine_min"] >= limits["cosine_min"]:
            result.failures.append(f"{name}: cosine min {figures['cosine_min']:.7f} < {limits['cosine_min']}")
        if "cosine_mean" in limits and not figures["cosine_mean"] >= limits["cosine_mean"]:
            result.failures.append(f"{name}: cosine mean {figures['cosine_mean']:.7f} < {limits['cosine_mean']}")
        if "max_abs_err" in limits and not figures["max_abs_err"] <= limits["max_abs_err"]:
            result.failures.append(f"{name}: max abs err {figures['max_abs_err']:.3g} > {limits['max_abs_err']}")

    if "patch_indices" in reference:
        if "patch_indices" not in produced or produced["patch_indices"].shape != reference["patch_indices"].shape:
            result.failures.append("patch_indices: missing or wrong shape")
        else:
            agreement = float(np.mean(produced["patch_indices"] == reference["patch_indices"]))
            result.figures["patch_indices"] = {"agreement": agreement,
                                               "differing_slots": int(np.sum(produced["patch_indices"]
                                                                             != reference["patch_indices"]))}
            if agreement < limits["selection_agreement"]:
                result.failures.append(f"patch_indices: agreement {agreement:.4f} < {limits['selection_agreement']}")

    if result.figures.keys() >= {"text_embeds", "frame_embeds"}:
        _compare_retrieval(reference, produced, limits, result, logit_scale=logit_scale,
                           frame_mask_mode=frame_mask_mode, tokens_per_frame=tokens_per_frame,
                           softmax_factor=softmax_factor)
    return result


def _compare_retrieval(reference, produced, limits, result, **sim_args) -> None:
    mask = reference["frame_mask"]
    sim_ref = similarity(reference["text_embeds"], reference["frame_embeds"], mask, **sim_args)
    sim_out = similarity(produced["text_embeds"], produced["frame_embeds"], mask, **sim_args)
    top1 = float(np.mean(sim_ref.argmax(1) == sim_out.argmax(1)))
    rankings = float(np.mean(np.all(np.argsort(-sim_ref, 1, kind="stable") == np.argsort(-sim_out, 1, kind="stable"),
                                    axis=1)))
    figures = {"max_abs_err": float(np.abs(sim_ref - sim_out).max()), "top1_agreement": top1,
               "ranking_identical": rankings}
    result.figures["similarity"] = figures
    if "similarity_max_abs_err" in limits and not figures["max_abs_err"] <= limits["similarity_max_abs_err"]:
        result.failures.append(f"similarity: max abs err {figures['max_abs_err']:.3g} > "
                               f"{limits['similarity_max_abs_err']}")
    if "ranking_identical" in limits and rankings < limits["ranking_identical"]:
        result.failures.append(f"similarity: rankings identical for {rankings:.2%} of texts, expected all")
    if "top1_agreement" in limits and top1 < limits["top1_agreement"]:
        result.failures.append(f"similarity: top-1 video identical for {top1:.2%} < {limits['top1_agreement']:.0%}")
