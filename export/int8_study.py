"""Which INT8 recipe to ship: NNCF vs ONNX Runtime quantization, static QDQ vs dynamic, measured in one run.

`ts2net int8-study --bundle B --out reports/int8-methods` (cli/int8_study.py) quantizes the bundle's FP32
graphs with every candidate recipe (same calibration set), times each resulting graph on every
runtime that can run it (ONNX Runtime CPU, OpenVINO CPU; batch 1, fixed threads, median of
`--iters` runs after warm-up) next to the FP32 graph, and computes the int8 gate figures on the
bundle's reference inputs. The result (JSON + Markdown) is what docs/int8.md's choice rests on.

Candidates:
- ``ort-dynamic``: onnxruntime.quantization.quantize_dynamic (per-channel INT8 weights, MatMul/Gemm)
- ``ort-static-qdq``: quantize_static, QDQ, U8S8, per-channel, MinMax calibration
- ``nncf-openvino``: nncf.quantize on the OpenVINO model, TRANSFORMER preset -> IR
- ``nncf-onnx``: the same NNCF recipe through its ONNX backend -> a QDQ .onnx
All keep the token selector in float (export.int8.FLOAT_SCOPES).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import int8

RECIPES = ("ort-dynamic", "ort-static-qdq", "nncf-openvino", "nncf-onnx")


def _quantize_nncf_onnx(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **int8.nncf_recipe())
    onnx.save(quantized, str(out))
    return out


def _timer_ort(path: Path, threads: int) -> Callable[[dict], None]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def _timer_ov(path: Path, threads: int, hint: str = "f32") -> Callable[[dict], None]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda feed: request.infer(feed)


def _median_ms(run: Callable[[dict], None], feed: dict, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        run(feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def run_study(bundle_dir: Path, threads: int = 2, warmup: int = 2, iters: int = 8, progress: bool = True,
              recipes: tuple[str, ...] = RECIPES, calibration_source: int8.CalibrationSource | None = None
              ) -> dict[str, Any]:
    from runtime.bundle import open_bundle
    from runtime.reports import environment

    bundle = open_bundle(bundle_dir)
    ref = bundle.reference()
    calibration = int8.load_calibration(bundle, progress=progress, default_source=calibration_source)
    text_feed = {"input_ids": ref["input_ids"][:1]}
    video_feed = {"frames": ref["frames"][:1], "frame_mask": ref["frame_mask"][:1]}
    full_text, full_video = {"input_ids": ref["input_ids"]}, {"frames": ref["frames"], "frame_mask": ref["frame_mask"]}
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ts2net-int8-study-") as tmp:
        work = Path(tmp)
        fp32 = {g: bundle.graph_path(g, "fp32") for g in ("text", "video")}
        baseline = {"recipe": "fp32 (no quantization)", "quantize_s": {}, "bytes": {g: fp32[g].stat().st_size
                                                                                    for g in fp32}, "latency_ms": {}}
        for g, feed in (("text", text_feed), ("video", video_feed)):
            baseline["latency_ms"][f"{g} onnxruntime"] = _median_ms(_timer_ort(fp32[g], threads), feed, warmup, iters)
            baseline["latency_ms"][f"{g} openvino"] = _median_ms(_timer_ov(fp32[g], threads), feed, warmup, iters)
        rows.append(baseline)
        for recipe in recipes:
            row: dict[str, Any] = {"recipe": recipe, "quantize_s": {}, "bytes": {}, "latency_ms": {}, "gates": {}}
            files = {}
            for g in ("text", "video"):
                feeds = calibration.feeds(g)
                start = time.perf_counter()
                if recipe == "ort-dynamic":
                    files[g] = int8.quantize_onnx(fp32[g], work / f"{g}.{recipe}.onnx", "dynamic", feeds)
                elif recipe == "ort-static-qdq":
                    files[g] = int8.quantize_onnx(fp32[g], work / f"{g}.{recipe}.onnx", "static", feeds)
                elif recipe == "nncf-openvino":
                    files[g] = int8.quantize_nncf(fp32[g], work / f"{g}.{recipe}.xml", feeds)
                else:
                    files[g] = _quantize_nncf_onnx(fp32[g], work / f"{g}.{recipe}.onnx", feeds)
                row["quantize_s"][g] = round(time.perf_counter() - start, 2)
                row["bytes"][g] = files[g].stat().st_size + (files[g].with_suffix(".bin").stat().st_size
                                                            if files[g].suffix == ".xml" else 0)
            runtimes = ["openvino"] if recipe == "nncf-openvino" else ["onnxruntime", "openvino"]
            for runtime in runtimes:
                make = _timer_ov if runtime == "openvino" else _timer_ort
                for g, feed in (("text", text_feed), ("video", video_feed)):
                    try:
                        row["latency_ms"][f"{g} {runtime}"] = _median_ms(make(files[g], threads), feed, warmup, iters)
                    except Exception as exc:  # noqa: BLE001 - a runtime that cannot run a recipe is a finding
                        row["latency_ms"][f"{g} {runtime}"] = None
                        row.setdefault("errors", []).append(f"{g} on {runtime}: {type(exc).__name__}: {exc}"[:300])
                try:
                    runner = int8.run_openvino if runtime == "openvino" else int8.run_onnxruntime
                    result = int8.reference_parity(ref, runner(files["text"], full_text),
                                                   runner(files["video"], full_video), "int8", bundle.similarity_args)
                    fig = result.figures
                    row["gates"][runtime] = {
                        "passed": result.passed, "failures": result.failures,
                        "text_cosine_min": fig["text_embeds"]["cosine_min"],
                        "text_cosine_mean": fig["text_embeds"]["cosine_mean"],
                        "frame_cosine_min": fig["frame_embeds"]["real_frames_cosine_min"],
                        "frame_cosine_mean": fig["frame_embeds"]["real_frames_cosine_mean"],
                        "selection_agreement": fig.get("patch_indices", {}).get("agreement")}
                except Exception as exc:  # noqa: BLE001
                    row["gates"][runtime] = {"passed": False, "failures": [f"{type(exc).__name__}: {exc}"[:300]]}
            rows.append(row)
            if progress:
                print(f"{recipe}: {json.dumps(row['latency_ms'])}", file=sys.stderr, flush=True)
    return {"command": "int8-study", "bundle": str(Path(bundle_dir).resolve()), "model": bundle.model.get("name"),
            "threads": threads, "warmup": warmup, "iters": iters, "load_average_at_start": load,
            "load_average_at_end": os.getloadavg()[0], "calibration": calibration.manifest_entry("video"),
            "rows": rows, "environment": environment()}


def render_markdown(report: dict[str, Any]) -> str:
    keys = ["text onnxruntime", "text openvino", "video onnxruntime", "video openvino"]
    base = report["rows"][0]["latency_ms"]
    lines = [f"# INT8 recipes on {report['model']} ({report['bundle']})", "",
             f"Batch 1, {report['threads']} threads, median of {report['iters']} runs after {report['warmup']} "
             f"warm-up, all in one run; 1-minute load average {report['load_average_at_start']:.2f} at the start, "
             f"{report['load_average_at_end']:.2f} at the end (the machine is shared: ratios are same-run, absolute "
             f"ms are loaded). Calibration: {report['calibration']['items']} videos / captions of "
             f"{report['calibration'].get('videos_source')}.", "",
             "| recipe | " + " | ".join(f"{k} ms" for k in keys) + " | video speed-up vs fp32 ORT | "
             "gates ORT | gates OpenVINO | frame cos min (ORT / OV) | selection (ORT / OV) | quantize s |",
             "|---|" + "---|" * (len(keys) + 6)]
    for row in report["rows"]:
        lat = row["latency_ms"]
        cells = [f"{lat[k]:.1f}" if lat.get(k) is not None else "-" for k in keys]
        best = min((v for k, v in lat.items() if k.startswith("video") and v is not None), default=None)
        speed = f"{base['video onnxruntime'] / best:.2f}x" if best else "-"
        gates = row.get("gates", {})

        def gate(rt):
            g = gates.get(rt)
            return "-" if g is None else ("pass" if g["passed"] else "FAIL")

        def fig(key, fmt):
            return " / ".join(fmt.format(gates[rt][key]) if rt in gates and gates[rt].get(key) is not None else "-"
                              for rt in ("onnxruntime", "openvino"))
        q = sum(row["quantize_s"].values()) if row["quantize_s"] else 0
        lines.append(f"| {row['recipe']} | " + " | ".join(cells) + f" | {speed} | {gate('onnxruntime')} | "
                     f"{gate('openvino')} | {fig('frame_cosine_min', '{:.5f}')} | "
                     f"{fig('selection_agreement', '{:.3f}')} | {q:.1f} |")
    errors = [f"- {row['recipe']}: {e}" for row in report["rows"] for e in row.get("errors", [])]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"
