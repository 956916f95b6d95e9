"""The demo's one-page report: parity, retrieval (overall and hard subsets), ablations, latency.

It only reads what the other commands wrote (the bundle manifest, `ts2net parity`, `ts2net eval`
and `ts2net bench` JSON reports, the committed ablation results), so every number in it was
measured by the command that owns it.

    ts2net summary --bundle bundles/demo --reports reports/demo --ablations ts2net/demo/ablations.json
    ts2net summary collect-ablations --out ts2net/demo/ablations.json baseline=eval.json ...
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .bundle_format import MANIFEST_NAME
from .reports import atomic_write_bytes, format_number, write_report

ABLATION_ORDER = ("baseline", "+shift", "+selection", "full")
SUBSETS = ("motion", "small_object")


def latest_json(directory: Path, prefix: str) -> dict[str, Any] | None:
    """The newest `{prefix}*.json` report in `directory` (eval and bench stems carry timestamps)."""
    candidates = sorted(Path(directory).glob(f"{prefix}*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(candidates[-1].read_text()) if candidates else None


def ablation_entry(eval_report: dict[str, Any], train_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of one trained variant that the ablation table shows."""
    entry = {"model": eval_report["bundle"].get("model"),
             "overall": {d: eval_report["metrics"][d] for d in ("t2v", "v2t")},
             "subsets": {name: {"t2v": result["t2v"], "pair_accuracy": result.get("pair_accuracy")}
                         for name, result in (eval_report.get("subsets") or {}).items()},
             "n_queries": eval_report["dataset"]["n_captions_evaluated"]}
    if train_summary:
        keys = ("wall_s", "steps", "epochs", "config", "final_val", "best_val")
        entry["train"] = {k: train_summary.get(k) for k in keys}
    return entry


def _r(metrics: dict[str, Any] | None, key: str = "R1") -> str:
    return "-" if not metrics else format_number(float(metrics[key]))


def ablation_markdown(ablations: dict[str, Any]) -> list[str]:
    variants = ablations.get("variants", {})
    lines = ["| model | temporal head | token shift | token selection | t2v R@1 | t2v R@5 | t2v MdR | v2t R@1 | "
             "motion t2v R@1 | small-object t2v R@1 | motion pair acc | small-object pair acc | train steps | "
             "train min |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in [n for n in ABLATION_ORDER if n in variants] + [n for n in variants if n not in ABLATION_ORDER]:
        v = variants[name]
        cfg = (v.get("train") or {}).get("config") or {}
        subsets = v.get("subsets", {})
        motion, small = subsets.get("motion", {}), subsets.get("small_object", {})
        lines.append(f"| {name} | {cfg.get('sim_header', 'seqTransf')} | {'yes' if cfg.get('token_shift', True) else 'no'} | "
                     f"{'yes' if cfg.get('token_selection', True) else 'no'} | {_r(v['overall']['t2v'])} | "
                     f"{_r(v['overall']['t2v'], 'R5')} | {_r(v['overall']['t2v'], 'MdR')} | {_r(v['overall']['v2t'])} | "
                     f"{_r(motion.get('t2v'))} | {_r(small.get('t2v'))} | "
                     f"{_r(motion.get('pair_accuracy'), 'accuracy')} | {_r(small.get('pair_accuracy'), 'accuracy')} | "
                     f"{(v.get('train') or {}).get('steps', '-')} | {((v.get('train') or {}).get('wall_s') or 0) / 60:.1f} |")
    return lines


def plot_ablations(ablations: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [n for n in ABLATION_ORDER if n in ablations.get("variants", {})]
    if not variants:
        return
    groups = ("overall",) + SUBSETS
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        v = ablations["variants"][name]
        values = [v["overall"]["t2v"]["R1"]] + [v["subsets"].get(s, {}).get("t2v", {}).get("R1", 0.0) for s in SUBSETS]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + width * (len(variants) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("text-to-video R@1 (%)")
    ax.set_title("Ablations on the synthetic benchmark (test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _default_path(bundle: Path) -> dict[str, Any] | None:
    """The path `ts2net index` / `search` take for this bundle here, from the gates recorded in it."""
    from .bundle import BundleError, open_bundle
    from .path_choice import fastest_gated_path, query_text_precision

    try:
        opened = open_bundle(bundle, verify=False)
    except BundleError:
        return None
    backend, precision, why = fastest_gated_path(opened)
    return {"backend": backend, "precision": precision, "why": why,
            "query_text_precision": query_text_precision(opened, backend, precision)}


def build_summary(bundle: Path, reports: Path, ablations_path: Path | None) -> tuple[dict[str, Any], str]:
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    evaluation = latest_json(reports / "eval", "eval-")
    bench = latest_json(reports / "bench", "")
    parity = {p: latest_json(reports / f"parity-{p}", "") for p in ("fp32", "fp16", "bf16", "int8", "int8-ort",
                                                                  "bf16-text-bf16")}
    ablations = json.loads(ablations_path.read_text()) if ablations_path and ablations_path.is_file() else None
    default_path = _default_path(bundle)
    data = {"kind": "ts2net-demo-summary", "model": manifest["model"]["name"],
            "source_checkpoint": manifest["source_checkpoint"], "export_parity": manifest["parity"],
            "runtime_parity": {p: (r or {}).get("passed") for p, r in parity.items()}, "default_path": default_path,
            "eval": {"metrics": evaluation["metrics"], "subsets": evaluation.get("subsets"),
                     "pairs": evaluation.get("pairs"), "dataset": evaluation["dataset"]} if evaluation else None,
            "bench": {"results": bench.get("results"), "ratios": bench.get("ratios"), "peaks": bench.get("peaks"),
                      "fastest_gated": bench.get("fastest_gated"), "uptime": bench.get("uptime")}
            if bench else None,
            "ablations": ablations}
    md = [f"# ts2net-deploy demo: `{data['model']}`", "",
          f"Source: {manifest['source_checkpoint']['name']}. Bundle: `{bundle}` (valid: {manifest['valid']}).", "",
          "## Parity: ONNX graphs vs PyTorch FP32 (export validation, ONNX Runtime CPU)", "",
          "bf16 and int8 rows: OpenVINO (bf16 hint on the FP32 graphs; NNCF INT8 IR) and ONNX Runtime (INT8 graph).", "",
          "| row | backend | text cos min / mean | frame cos min / mean | max abs err (frames) | selection agreement | "
          "top-1 agreement | passed |", "|---|---|---|---|---|---|---|---|"]
    for precision, entry in manifest["parity"].items():
        if precision == "real_data":  # gate records of `ts2net parity --csv --videos`: the section below
            continue
        if entry.get("skipped"):
            md.append(f"| {precision} | {entry.get('backend', '')} | not measured: {entry['skipped']} | | | | | - |")
            continue
        f = entry["figures"]
        means = [f"{f[o]['cosine_mean']:.7f}" if "cosine_mean" in f[o] else "-" for o in ("text_embeds", "frame_embeds")]
        md.append(f"| {precision} | {entry.get('backend', '-')} | {f['text_embeds']['cosine_min']:.7f} / {means[0]} | "
                  f"{f['frame_embeds']['cosine_min']:.7f} / {means[1]} | {f['frame_embeds']['max_abs_err']:.2e} | "
                  f"{f.get('patch_indices', {}).get('agreement', float('nan')):.4f} | "
                  f"{f['similarity']['top1_agreement']:.2%} | {entry['passed']} |")
    real = {p: r for p, r in parity.items() if r and p in ("bf16", "int8", "int8-ort", "bf16-text-bf16")}
    if real:
        md += ["", "## Accuracy gates on real data (`ts2net parity --csv --videos`, vs the FP32 graph)", "",
               "Gates: top-1 identical to FP32 for >= 97% of queries, |dR@1| and |dR@5| <= 1.0 point, both directions.",
               "", "| precision | backend | t2v top-1 identical | t2v dR@1 | t2v dR@5 | v2t top-1 identical | v2t dR@1 | "
               "v2t dR@5 | t2v R@1 FP32 / row | passed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, report in real.items():
            precision = report.get("precision") or key
            text = report.get("text_precision")
            if text:  # reports before per-graph precisions have none
                precision += f" (text graph {text})" if text != precision else " (both graphs)"
            if report.get("skipped"):
                md.append(f"| {precision} | {report['backend']} | not run here: {report['skipped']} | | | | | | | - |")
                continue
            r = (report.get("real_data") or {}).get("retrieval")
            if not r:
                md.append(f"| {precision} | {report['backend']} | no real-data check | | | | | | | {report['passed']} |")
                continue
            md.append(f"| {precision} | {report['backend']} | {r['top1_agreement']:.2%} | {r['r1_delta_points']:+.2f} | "
                      f"{r['r5_delta_points']:+.2f} | {r['v2t_top1_agreement']:.2%} | {r['v2t_r1_delta_points']:+.2f} | "
                      f"{r['v2t_r5_delta_points']:+.2f} | {r['t2v_reference']['R1']:.1f} / {r['t2v_backend']['R1']:.1f} | "
                      f"{report['passed']} |")
        default = data.get("default_path")
        if default:
            md += ["", "Default path of `ts2net index` / `search` for this bundle on this machine: "
                       f"**{default['backend']} {default['precision']}** (queries: text graph "
                       f"{default['query_text_precision']}); {default['why']}."]
    if evaluation:
        md += ["", f"## Retrieval ({evaluation['dataset']['n_captions_evaluated']} captions x "
                   f"{evaluation['dataset']['n_videos_evaluated']} videos, ONNX Runtime CPU, FP32 graph)", "",
               "| direction | R@1 | R@5 | R@10 | R@50 | MdR | MnR |", "|---|---|---|---|---|---|---|"]
        for direction, metrics in evaluation["metrics"].items():
            md.append(f"| {direction} | " + " | ".join(f"{metrics[k]:.1f}" for k in ("R1", "R5", "R10", "R50", "MdR", "MnR"))
                      + " |")
        for name, result in (evaluation.get("subsets") or {}).items():
            if "t2v" not in result:  # no evaluated video belongs to the subset (eval writes a note instead)
                md.append(f"| {name} subset t2v | " + " | ".join(["-"] * 6) + " |")
                continue
            md.append(f"| {name} subset t2v | " + " | ".join(f"{result['t2v'][k]:.1f}"
                                                            for k in ("R1", "R5", "R10", "R50", "MdR", "MnR")) + " |")
    if ablations:
        md += ["", "## Ablations (same training budget, same test split)", "", *ablation_markdown(ablations),
               "", "![ablations](ablations.png)"]
    if bench:
        md += ["", "## Latency (see bench/ for the full report and chart)", "",
               "| graph | backend | precision | batch | p50 ms | items/s | GFLOP/s | % of measured peak |",
               "|---|---|---|---|---|---|---|---|"]
        for row in bench.get("results", []):
            md.append(f"| {row['graph']} | {row['backend']} | {row['precision']} | {row['batch']} | {row['p50_ms']:.2f} | "
                      f"{row['items_per_s']:.1f} | {row.get('gflops') or float('nan'):.1f} | "
                      f"{row.get('pct_of_peak') or float('nan'):.0f} |")
        if bench.get("fastest_gated"):
            md += ["", "Fastest gated path vs what a user would run instead (same run):", "",
                   "| graph | batch | path | p50 ms | vs torch eager FP32 | vs torch eager BF16 autocast |",
                   "|---|---|---|---|---|---|"]
            for r in bench["fastest_gated"]:
                vs = [f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("vs_torch_eager_fp32", "vs_torch_eager_bf16")]
                md.append(f"| {r['graph']} | {r['batch']} | {r['backend']} {r['precision']} | {r['p50_ms']:.2f} | "
                          f"{vs[0]} | {vs[1]} |")
        if bench.get("ratios"):
            md += ["", "| ratio | graph | batch | value |", "|---|---|---|---|"]
            md += [f"| {r['ratio']} | {r['graph']} | {r['batch']} | {r['value']:.2f} |" for r in bench["ratios"]]
        if bench.get("uptime"):
            md += ["", f"Machine load during the benchmark (`uptime`): `{bench['uptime']}`."]
    return data, "\n".join(md) + "\n"



def write_summary(bundle: Path, reports: Path, ablations_path: Path | None) -> tuple[str, Path, Path]:
    """Build the summary, write summary.{json,md} (+ ablations.png) into `reports`; (markdown, json, md paths)."""
    data, markdown = build_summary(bundle, reports, ablations_path)
    if data["ablations"]:
        plot_ablations(data["ablations"], Path(reports) / "ablations.png")
    json_path, md_path = write_report(reports, "summary", data, markdown)
    return markdown, json_path, md_path


def ablation_table(variants: Sequence[str]) -> dict[str, Any]:
    """The ablation table from `NAME=EVAL_JSON[,TRAIN_SUMMARY_JSON]` items, one per trained variant."""
    table: dict[str, Any] = {"kind": "ts2net-ablations", "variants": {}}
    for item in variants:
        name, _, paths = item.partition("=")
        eval_path, _, train_path = paths.partition(",")
        if not name or not eval_path:
            raise ValueError(f"{item!r}: expected NAME=EVAL_JSON[,TRAIN_SUMMARY_JSON]")
        train = json.loads(Path(train_path).read_text()) if train_path else None
        table["variants"][name] = ablation_entry(json.loads(Path(eval_path).read_text()), train)
    return table


def write_ablation_table(out: Path, table: dict[str, Any]) -> Path:
    return atomic_write_bytes(out, (json.dumps(table, indent=2) + "\n").encode())
