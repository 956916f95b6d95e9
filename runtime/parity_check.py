"""`ts2net parity`: does a backend give the same answers as the PyTorch FP32 model?

Two checks, each against the row of the parity table (docs/runtime.md) for the precision under test:

1. Reference inputs: the bundle's `reference.npz` holds inputs and the PyTorch FP32 outputs
   recorded at export, so this check needs no torch. The backend's outputs go through
   `runtime.parity.compare_outputs` (embeddings, token selection, similarity, rankings).
2. Real data (with --csv and --videos): the captions and videos are encoded with the backend
   and with the bundle's FP32 graph on ONNX Runtime CPU. The runtime may not import torch, so the
   FP32 graph stands in for PyTorch here; it is tied to PyTorch by check 1 and by the export's
   own validation, and the report says so. Figures: the same comparison plus top-1 agreement and
   the R@1 delta (text-to-video) of `runtime.metrics.retrieval_metrics`.

Every failure of both checks is listed at once; `run_parity` raises BundleError, BackendUnavailable,
OSError or ValueError when the check cannot run (the CLI maps those to exit code 2, failures to 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

STAND_IN = ("ort-cpu", "fp32")  # the real-data reference: the FP32 graph on ONNX Runtime CPU


def _precision_row(encoder) -> str:
    """The parity row a path is held to: the precision its video graph actually runs (an engine's is fp16).

    The text graph of the CPU bf16 / int8 paths runs FP32 (runtime.path_choice.default_text_precision),
    which the bf16 / int8 row's thresholds cover a fortiori.
    """
    return encoder.backend("video").precision


def check_reference(bundle, encoder) -> Any:
    """Backend outputs on reference.npz's inputs vs the PyTorch FP32 outputs stored beside them."""
    from .parity import compare_outputs

    ref = bundle.reference()
    text = encoder.encode_ids(ref["input_ids"])
    frame_embeds, patch_indices = encoder.encode_frames(ref["frames"], ref["frame_mask"])
    produced = {"text_embeds": text, "frame_embeds": frame_embeds, "frame_mask": ref["frame_mask"]}
    if patch_indices is not None:
        produced["patch_indices"] = patch_indices
    return compare_outputs(ref, produced, _precision_row(encoder), **bundle.similarity_args)


def check_real_data(bundle, encoder, annotations: Path, videos: Path, limit: int | None, batch_size: int,
                    threads: int | None, progress: bool, workers: int) -> dict[str, Any]:
    """Encode real captions and videos with the backend and with the stand-in reference; compare."""
    from . import datasets
    from .encoder import BundleEncoder, decode_videos
    from .parity import compare_outputs

    rs = datasets.load_retrieval_set(annotations, videos, subsets=False, allow_missing=True)
    if limit is not None and limit < len(rs.video_ids):
        rs, _ = rs.without_videos(rs.video_ids[limit:])
    row = _precision_row(encoder)
    same = (encoder.backend_name, row) == STAND_IN and encoder.text_precision == STAND_IN[1]
    reference = encoder if same else BundleEncoder(bundle, *STAND_IN, batch_size=batch_size, threads=threads)
    skipped: list[tuple[str, str]] = []
    kept, a_embeds, a_indices, b_embeds, b_indices, masks = [], [], [], [], [], []
    try:
        for batch in decode_videos(bundle, rs.paths(), batch_size, skip_bad=True, skipped=skipped,
                                   progress=progress, workers=workers):
            fe, pi = encoder.encode_frames(batch.frames, batch.mask)
            rfe, rpi = (fe, pi) if same else reference.encode_frames(batch.frames, batch.mask)
            kept += batch.paths
            masks.append(batch.mask)
            a_embeds.append(fe), b_embeds.append(rfe)
            if pi is not None:
                a_indices.append(pi), b_indices.append(rpi)
        path_to_id = {str(rs.video_paths[v]): v for v in rs.video_ids}
        skipped_ids = [path_to_id[p] for p, _ in skipped]
        rs, removed = rs.without_videos(skipped_ids)
        data: dict[str, Any] = {
            "annotations": str(annotations), "videos": str(videos), "format": rs.format,
            "n_captions": len(rs.captions), "n_videos": len(rs.video_ids),
            "reference": "FP32 ONNX graph on ONNX Runtime CPU (stand-in for PyTorch FP32: the runtime does not "
                         "import torch; the graph matches PyTorch on the reference inputs)",
            "skipped_videos": [{"video_id": v, "path": p, "reason": r} for v, (p, r) in zip(skipped_ids, skipped)],
            "captions_dropped_with_skipped_videos": len(removed),
        }
        if same:
            data["note"] = ("the backend under test is the stand-in reference itself, so the real-data comparison "
                            "is trivially identical; use it for the metrics only")
        if not rs.video_ids:
            listed = "; ".join(f"{p}: {r}" for p, r in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
            raise ValueError(f"real data: no readable video, so the comparison could not run ({len(skipped)} "
                             f"skipped: {listed}); check --videos")
        texts = rs.texts
        produced = {"text_embeds": encoder.encode_texts(texts, progress=progress),
                    "frame_embeds": np.concatenate(a_embeds), "frame_mask": np.concatenate(masks)}
        expected = {"text_embeds": produced["text_embeds"] if same else reference.encode_texts(texts),
                    "frame_embeds": np.concatenate(b_embeds), "frame_mask": produced["frame_mask"]}
        if a_indices:
            produced["patch_indices"], expected["patch_indices"] = np.concatenate(a_indices), np.concatenate(b_indices)
    finally:
        if not same:
            reference.close()
    result = compare_outputs(expected, produced, row, **bundle.similarity_args)
    figures, failures = retrieval_gates(expected, produced, rs.caption_video, row, bundle.similarity_args)
    failures = [f"real data: {f}" for f in result.failures + failures]
    data.update({"comparison": result.to_dict(), "retrieval": figures, "failures": failures})
    data["markdown"] = result.to_markdown(f"Real data: {encoder.backend_name} vs FP32 ONNX Runtime CPU")
    return data


def retrieval_gates(expected: dict[str, np.ndarray], produced: dict[str, np.ndarray], caption_video: np.ndarray,
                    row: str, similarity_args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Retrieval figures of the backend vs the reference on real data, and the failures of `row`'s gates.

    Both directions are measured: text-to-video (each caption ranks the videos) and video-to-text
    (each video ranks the captions, its best own caption counts). Top-1 agreement is the share of
    queries whose first answer is the same item for both. The fp16 row gates t2v |dR@1| only; the
    bf16 / int8 rows gate top-1 agreement, |dR@1| and |dR@5| in both directions (parity.THRESHOLDS).
    """
    from .frame_similarity import similarity
    from .metrics import retrieval_metrics, v2t_metrics
    from .parity import THRESHOLDS

    sims = [similarity(d["text_embeds"], d["frame_embeds"], d["frame_mask"], **similarity_args)
            for d in (expected, produced)]
    t2v = [retrieval_metrics(s, caption_video) for s in sims]
    v2t = [v2t_metrics(s, caption_video) for s in sims]
    figures = {"t2v_reference": t2v[0], "t2v_backend": t2v[1], "v2t_reference": v2t[0], "v2t_backend": v2t[1],
               "r1_delta_points": t2v[1]["R1"] - t2v[0]["R1"], "r5_delta_points": t2v[1]["R5"] - t2v[0]["R5"],
               "v2t_r1_delta_points": v2t[1]["R1"] - v2t[0]["R1"], "v2t_r5_delta_points": v2t[1]["R5"] - v2t[0]["R5"],
               "top1_agreement": float(np.mean(sims[0].argmax(1) == sims[1].argmax(1))),
               "v2t_top1_agreement": float(np.mean(sims[0].argmax(0) == sims[1].argmax(0)))}
    limits = THRESHOLDS[row]
    failures = []
    if "r1_delta_abs" in limits and abs(figures["r1_delta_points"]) > limits["r1_delta_abs"]:
        failures.append(f"|R@1 delta| {abs(figures['r1_delta_points']):.2f} points > {limits['r1_delta_abs']}")
    for direction, prefix in (("t2v", ""), ("v2t", "v2t_")):
        for k in ("1", "5"):
            bound, delta = limits.get(f"real_r{k}_delta_abs"), figures[f"{prefix}r{k}_delta_points"]
            if bound is not None and abs(delta) > bound:
                failures.append(f"{direction} |R@{k} delta| {abs(delta):.2f} points > {bound}")
        bound, top1 = limits.get("real_top1_agreement"), figures[f"{prefix}top1_agreement"]
        if bound is not None and top1 < bound:
            failures.append(f"{direction} top-1 identical to FP32 for {top1:.2%} of queries < {bound:.0%}")
    return figures, failures


def render_markdown(report: dict[str, Any], reference_md: str) -> str:
    from .reports import environment_markdown

    text = report.get("text_precision")
    graphs = report["precision"] + (f", text graph {text}" if text and text != report["precision"] else "")
    lines = [f"# Parity: {report['backend']} ({graphs}) — {'PASS' if report['passed'] else 'FAIL'}", "",
             f"Bundle `{report['bundle']['path']}` (id {report['bundle']['id']}, model {report['bundle']['model']}, "
             f"source: {report['bundle']['source']}).", "",
             f"Thresholds: the {report['precision']} row of the parity table (docs/runtime.md).", ""]
    if report["failures"]:
        lines += ["## Failures", "", *[f"- {f}" for f in report["failures"]], ""]
    lines += ["## Reference inputs vs PyTorch FP32 (reference.npz)", "", reference_md]
    real = report.get("real_data")
    if real:
        lines += ["## Real data", "", f"{real['n_captions']} captions, {real['n_videos']} videos from "
                  f"`{real['annotations']}`. Reference: {real['reference']}.", ""]
        if real.get("note"):
            lines += [f"Note: {real['note']}.", ""]
        if "retrieval" in real:
            r = real["retrieval"]
            lines += ["| direction | model | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---|---|---|---|---|---|"]
            for direction in ("t2v", "v2t"):
                for label in ("reference", "backend"):
                    m = r[f"{direction}_{label}"]
                    lines.append(f"| {direction} | {label} | {m['R1']:.2f} | {m['R5']:.2f} | {m['R10']:.2f} | "
                                 f"{m['MdR']:g} | {m['MnR']:.2f} |")
            lines += ["", f"t2v: R@1 delta {r['r1_delta_points']:+.2f}, R@5 delta {r['r5_delta_points']:+.2f} points, "
                      f"top-1 identical {r['top1_agreement']:.2%}; v2t: R@1 delta {r['v2t_r1_delta_points']:+.2f}, "
                      f"R@5 delta {r['v2t_r5_delta_points']:+.2f} points, top-1 identical "
                      f"{r['v2t_top1_agreement']:.2%}.", "", real.get("markdown", "")]
        if real["skipped_videos"]:
            lines += [f"{len(real['skipped_videos'])} unreadable video(s) skipped with their captions:", ""]
            lines += [f"- `{s['path']}`: {s['reason']}" for s in real["skipped_videos"]]
            lines.append("")
    lines += ["## Environment", "", environment_markdown(report["environment"])]
    return "\n".join(lines)


def run_parity(bundle_dir: Path, backend: str, precision: str | None, annotations: Path | None,
               videos: Path | None, limit: int | None, out_dir: Path, batch_size: int = 16,
               threads: int | None = None, workers: int = 0,
               progress: bool = True, record: bool = True, text_precision: str | None = None
               ) -> tuple[dict[str, Any], Path, Path]:
    """Both checks on one backend; writes parity.{json,md} into `out_dir`; (report, json path, md path).

    record: write the real-data gate outcome into the bundle's manifest (runtime/gate_record.py), so
    the default path of `ts2net index` / `search` never stays on a path that failed on real data.
    """
    from .bundle import open_bundle
    from .encoder import BundleEncoder
    from .reports import environment, write_report

    bundle = open_bundle(bundle_dir)
    encoder = BundleEncoder(bundle, backend, precision, batch_size=batch_size, threads=threads,
                            text_precision=text_precision)
    with encoder:
        row = _precision_row(encoder)
        text_row = encoder.backend("text").precision
        reference = check_reference(bundle, encoder)
        real = (check_real_data(bundle, encoder, annotations, videos, limit, batch_size, threads, progress,
                                workers) if annotations is not None else None)
    failures = [f"reference inputs: {f}" for f in reference.failures] + (real or {}).get("failures", [])
    source = (bundle.manifest.get("source_checkpoint") or {}).get("name")
    report = {
        "command": "parity", "passed": not failures, "backend": backend, "precision": row,
        "text_precision": text_row,
        "bundle": {"path": str(bundle.path.resolve()), "id": bundle.content_id, "model": bundle.model.get("name"),
                   "source": source, "valid": bundle.valid},
        "failures": failures, "reference_inputs": reference.to_dict(), "real_data": real,
        "environment": environment(),
    }
    markdown = render_markdown(report, reference.to_markdown(f"{backend} vs PyTorch FP32"))
    if real is not None:
        real.pop("markdown", None)
    if real is not None and record and "retrieval" in real:
        from .gate_record import record_real_data_gate

        try:
            record_real_data_gate(bundle.path, backend, row, real, text_row)
            report["recorded_in_manifest"] = True
        except OSError as exc:  # a read-only bundle: the report still has every figure
            report["recorded_in_manifest"] = f"not recorded: {exc}"
    json_path, md_path = write_report(out_dir, "parity", report, markdown)
    return report, json_path, md_path


def write_skipped_report(bundle_dir: Path, backend: str, precision: str | None, reason: str,
                         out_dir: Path) -> tuple[Path, Path]:
    """The report of a parity run this machine cannot do (e.g. bf16 without BF16): the reason, no figures."""
    from .reports import environment, write_report

    report = {"command": "parity", "passed": None, "skipped": reason, "backend": backend, "precision": precision,
              "bundle": {"path": str(Path(bundle_dir).resolve())}, "environment": environment()}
    return write_report(out_dir, "parity", report, f"# Parity: {backend} ({precision}): not run here\n\n{reason}\n")
