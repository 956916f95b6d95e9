"""The evaluation report in words: the Markdown report and the text `ts2net eval` prints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..reports import format_number
from .ranking import CONVENTIONS, DIRECTIONS, LABELS, METRIC_KEYS


def _fmt(value) -> str:
    return format_number(value, ".1f", small_spec=".3g")


def metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of the four metric blocks."""
    lines = ["| direction | R@1 | R@5 | R@10 | R@50 | MdR | MnR | queries |", "|---|---|---|---|---|---|---|---|"]
    for name in DIRECTIONS:
        if name in metrics:
            m = metrics[name]
            lines.append(f"| {LABELS[name]} | " + " | ".join(_fmt(m[k]) for k in METRIC_KEYS)
                         + f" | {int(m['n_queries'])} |")
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    """The human summary of an evaluation report."""
    b, d, cache, t = data["bundle"], data["dataset"], data["cache"], data["timing_seconds"]
    lines = ["# TS2-Net retrieval evaluation", "",
             f"- bundle: `{b['path']}` (id `{b['id']}`, model `{b['model']}`)",
             f"- backend: `{data['backend']}`, precision `{data['precision']}`, batch size {data['batch_size']}",
             f"- annotations: `{d['annotations']}` ({d['format']}); videos `{d['videos_dir']}`",
             f"- evaluated: {d['n_captions_evaluated']} captions × {d['n_videos_evaluated']} videos "
             f"(of {d['n_captions']} × {d['n_videos']}; {len(data['skipped_videos'])} video(s) skipped)",
             f"- started: {data['started']}", "", "## Metrics", ""]
    lines += metrics_table(data["metrics"])
    lines += ["", "R@K in percent; MdR / MnR = median / mean rank (1-based, optimistic). "
                  "DSL: " + CONVENTIONS["dsl"] + "."]
    if data["subsets"]:
        lines += ["", "## Hard subsets", "", "Queries: the subset's captions; candidates: all evaluated videos.", "",
                  "| subset | videos | captions | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | t2v DSL R@1 | v2t R@1 "
                  "| v2t DSL R@1 | pair acc. | pair acc. DSL |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in data["subsets"].items():
            if not e.get("n_videos"):
                lines.append(f"| {name} | 0 | 0 | " + " | ".join(["-"] * 9) + " |")
                continue
            pa, pad = e.get("pair_accuracy"), e.get("pair_accuracy_dsl")
            lines.append(
                f"| {name} | {e['n_videos']} | {e['n_captions']} | {_fmt(e['t2v']['R1'])} | {_fmt(e['t2v']['R5'])} | "
                f"{_fmt(e['t2v']['R10'])} | {_fmt(e['t2v']['MdR'])} | {_fmt(e['t2v_dsl']['R1'])} | "
                f"{_fmt(e['v2t']['R1'])} | {_fmt(e['v2t_dsl']['R1'])} | {_fmt(pa['accuracy']) if pa else '-'} | "
                f"{_fmt(pad['accuracy']) if pad else '-'} |")
        if data.get("pairs") and data["pairs"].get("all"):
            p, pd = data["pairs"]["all"], data["pairs"]["all_dsl"]
            lines += ["", f"All pairs: own video above its partner for {_fmt(p['accuracy'])}% of "
                          f"{p['n_queries']} captions ({_fmt(pd['accuracy'])}% with DSL; {p['ties']} ties)."]
    if data.get("files", {}).get("recall_png"):
        lines += ["", f"![recall@K]({Path(data['files']['recall_png']).name})"]
    lines += ["", "## Timing", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in t.items()]
    lines += ["", f"Videos: {cache['videos_encoded']} encoded, {cache['videos_from_cache']} from the cache; "
                  f"texts: {cache['texts_encoded']} encoded, {cache['texts_from_cache']} from the cache"
                  + (f" (`{cache['dir']}`)." if cache["dir"] else " (cache disabled).")]
    if data["skipped_videos"]:
        lines += ["", "## Skipped videos", "",
                  f"{len(data['skipped_videos'])} unreadable video(s) were skipped; their "
                  f"{len(data['removed_queries'])} caption(s) were removed from the queries.", "",
                  "| video_id | file | reason |", "|---|---|---|"]
        lines += [f"| {s['video_id']} | `{s['path']}` | {s['reason']} |" for s in data["skipped_videos"]]
    env = data.get("environment") or {}
    if env:
        lines += ["", "## Environment", ""]
        try:
            from ..reports import environment_markdown

            lines.append(environment_markdown(env).rstrip())
        except (ImportError, KeyError, TypeError):  # an environment dict of another shape
            lines += [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def summary_text(data: dict[str, Any]) -> str:
    """What `ts2net eval` prints: the metric table, subsets, timing and the written files."""
    d, cache, t = data["dataset"], data["cache"], data["timing_seconds"]
    lines = [f"{d['n_captions_evaluated']} captions x {d['n_videos_evaluated']} videos "
             f"({data['backend']}, {data['precision']}; bundle {data['bundle']['id']})", ""]
    lines += metrics_table(data["metrics"])
    for name, e in data["subsets"].items():
        if e.get("n_videos"):
            pa = e.get("pair_accuracy")
            lines.append(f"subset {name}: {e['n_captions']} queries, t2v R@1 {_fmt(e['t2v']['R1'])}, "
                         f"R@5 {_fmt(e['t2v']['R5'])}, DSL R@1 {_fmt(e['t2v_dsl']['R1'])}"
                         + (f", pair acc. {_fmt(pa['accuracy'])}%" if pa else ""))
        else:
            lines.append(f"subset {name}: no evaluated video")
    if data["skipped_videos"]:
        lines.append(f"skipped {len(data['skipped_videos'])} unreadable video(s) and their "
                     f"{len(data['removed_queries'])} caption(s):")
        lines += [f"  {s['path']}: {s['reason']}" for s in data["skipped_videos"]]
    lines.append(f"time: videos {t['encode_videos']:.2f} s ({cache['videos_encoded']} encoded, "
                 f"{cache['videos_from_cache']} cached), texts {t['encode_texts']:.2f} s ({cache['texts_encoded']} "
                 f"encoded), similarity {t['similarity']:.3f} s, total {t['total']:.2f} s")
    for key in ("json", "markdown", "recall_png", "similarity_npy"):
        if key in data["files"]:
            lines.append(f"wrote {data['files'][key]}")
    return "\n".join(lines)
