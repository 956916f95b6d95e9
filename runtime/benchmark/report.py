"""The benchmark report: Markdown (with the busy-machine warning) and the latency chart (PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _busy_warning(settings: Mapping[str, Any]) -> list[str]:
    """A loaded machine makes every timing slower and the peak lower; say so where the numbers are read."""
    load, cores = settings.get("load_average_at_start"), settings.get("usable_cores") or 1
    if load is None or load <= 0.5 * cores:
        return []
    return [f"**Warning: the machine was busy** (1-minute load average {load:.1f} on {cores} usable cores when the "
            "run started): other processes shared the cores, so latencies are pessimistic and the measured peak is "
            "understated. Re-run on an idle machine for numbers to quote.", ""]


def render_markdown(report: dict[str, Any]) -> str:
    from ..reports import environment_markdown

    s = report["settings"]
    lines = [f"# Benchmark: {report['bundle']['model']} (bundle {report['bundle']['id']})", "",
             f"{s['threads']} threads, {s['warmup']} warm-up + {s['iters']} timed runs per configuration. "
             f"Latency: {s['latency']}.", "",
             f"FLOPs per item (2 x multiply-adds from the config): text {report['flops_per_item']['text'] / 1e9:.4g} "
             f"GFLOP, video {report['flops_per_item']['video'] / 1e9:.4g} GFLOP.", "",
             *_busy_warning(s),
             "## Attainable peak (same run, same kernel library)", "",
             "ONNX Runtime CPU FP16 rows are set against the FP32 MatMul peak: the CPU path has no faster FP16 "
             "GEMM, so the FP32 peak bounds both. BF16 and INT8 rows are set against the MatMul of their own "
             "precision and library (runtime/benchmark/precision_peaks.py).", "",
             "| backend | precision | library | dtype | GFLOP/s by n | best GFLOP/s |", "|---|---|---|---|---|---|"]
    for backend, by_precision in report["peaks"].items():
        for precision, peak in by_precision.items():
            if "error" in peak:
                lines.append(f"| {backend} | {precision} | not measured: {peak['error']} | | | |")
                continue
            sizes = ", ".join(f"{n}: {g:.1f}" for n, g in peak["gflops_by_size"].items())
            lines.append(f"| {backend} | {precision} | {peak['library']} | {peak['dtype']} | {sizes} | "
                         f"{peak['best_gflops']:.1f} |")
    lines += ["", "## Latency", "",
              "| graph | backend | precision | batch | p50 ms | p95 ms | p99 ms | items/s | GFLOP/s | % of peak | "
              "run RSS MiB | load RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        pct = f"{r['pct_of_peak']:.1f}" if r["pct_of_peak"] is not None else "-"
        lines.append(f"| {r['graph']} | {r['backend']} | {r['precision']} | {r['batch']} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['items_per_s']:.1f} | {r['gflops']:.2f} | {pct} | "
                     f"{r['run_peak_rss_mib']:.1f} | {r['load_rss_mib']:.1f} |")
    if report.get("fastest_gated"):
        lines += ["", "## Fastest gated path (p50, same run)", "",
                  "| graph | batch | backend | precision | p50 ms | vs torch eager FP32 | vs torch eager BF16 autocast | "
                  "% of peak |", "|---|---|---|---|---|---|---|---|"]
        for r in report["fastest_gated"]:
            ratio = [f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("vs_torch_eager_fp32", "vs_torch_eager_bf16")]
            pct = f"{r['pct_of_peak']:.1f}" if r.get("pct_of_peak") is not None else "-"
            lines.append(f"| {r['graph']} | {r['batch']} | {r['backend']} | {r['precision']} | {r['p50_ms']:.2f} | "
                         f"{ratio[0]} | {ratio[1]} | {pct} |")
    if report["ratios"]:
        versus = [v for v in ("torch-eager fp32", "torch-eager bf16") if any(r["versus"] == v for r in report["ratios"])]
        by_row: dict[tuple, dict] = {}
        for r in report["ratios"]:
            if r["versus"] in versus:
                by_row.setdefault((r["graph"], r["batch"], r["row"]), {})[r["versus"]] = r["value"]
        lines += ["", "## Speed-up vs PyTorch (p50 ratio, same run; > 1 means the row is faster)", "",
                  "| graph | batch | row | " + " | ".join(f"vs {v}" for v in versus) + " |",
                  "|---|---|---|" + "---|" * len(versus)]
        for (graph, batch, row), values in by_row.items():
            lines.append(f"| {graph} | {batch} | {row} | " + " | ".join(
                f"{values[v]:.2f}x" if v in values else "-" for v in versus) + " |")
        other = [r for r in report["ratios"] if r["versus"] not in versus]
        if other:
            lines += ["", "| ratio | graph | batch | value |", "|---|---|---|---|"]
            lines += [f"| {r['ratio']} | {r['graph']} | {r['batch']} | {r['value']:.2f} |" for r in other]
    lines += ["", f"PyTorch eager baseline: {report['torch_baseline']}."]
    if report.get("uptime"):
        lines += ["", f"`uptime` at the end of the run: `{report['uptime']}` (the machine may be shared: ratios are "
                  "same-run, absolute numbers are as loaded as this says)."]
    if report["skipped"]:
        lines += ["", "Not measured:", ""] + [f"- {s['backend']}: {s['reason']}" for s in report["skipped"]]
    lines += ["", "## Environment", "", environment_markdown(report["environment"])]
    return "\n".join(lines)


def plot_latency(report: dict[str, Any]) -> bytes:
    """PNG: p50 latency (bars) with p95 whiskers by batch size, one panel per graph, one bar per backend."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    series = sorted({(r["backend"], r["precision"]) for r in rows}, key=lambda bp: (bp[0], bp[1] != "fp32", bp[1]))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), squeeze=False)
    width = 0.8 / max(len(series), 1)
    for ax, graph in zip(axes[0], ("text", "video")):
        for i, (backend, precision) in enumerate(series):
            by_batch = {r["batch"]: r for r in rows if r["graph"] == graph and (r["backend"], r["precision"])
                        == (backend, precision)}
            xs = [j + (i - (len(series) - 1) / 2) * width for j, b in enumerate(batches) if b in by_batch]
            p50 = [by_batch[b]["p50_ms"] for b in batches if b in by_batch]
            p95 = [by_batch[b]["p95_ms"] - by_batch[b]["p50_ms"] for b in batches if b in by_batch]
            ax.bar(xs, p50, width, yerr=[np.zeros(len(p95)), p95], capsize=2, label=f"{backend} {precision}")
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency ms (p50, whisker p95)")
        ax.set_yscale("log")
        ax.set_title(f"{graph} encoder")
        ax.grid(axis="y", alpha=0.3)
    # One legend below both panels: inside a panel it covered bars once there were many series.
    handles, labels = axes[0][0].get_legend_handles_labels()
    legend_rows = -(-len(series) // 4)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(series), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{report['bundle']['model']}: latency by backend and batch size "
                 f"({report['settings']['threads']} threads)")
    fig.tight_layout(rect=(0, 0.045 * legend_rows + 0.01, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_bench_report(report: dict[str, Any], out_dir: Path) -> tuple[str, Path, Path, Path | None]:
    """bench.{json,md} and (when anything was measured) bench.png in `out_dir`; (markdown, json, md, png)."""
    from ..reports import atomic_write_bytes, write_report

    markdown = render_markdown(report)
    json_path, md_path = write_report(out_dir, "bench", report, markdown)
    png_path = atomic_write_bytes(Path(out_dir) / "bench.png", plot_latency(report)) if report["results"] else None
    return markdown, json_path, md_path, png_path
