"""`ts2net eval`: text-video retrieval evaluation of a bundle (MSR-VTT 1k-A style).

What is computed, and the conventions behind each number (also written into every report):

* The similarity is ``runtime.similarity`` with the bundle's own constants, laid out
  ``sim[t, v]`` = texts in rows, videos in columns, logit-scaled.
* Text-to-video: each caption is a query ranking all evaluated videos (``ranks(sim, gt)``).
  Video-to-text: each video is a query ranking all captions (``v2t_ranks``; with several
  captions per video its best-ranked own caption counts, ``--v2t-candidates videos`` switches to
  the CLIP4Clip convention of ranking caption groups). On 1k-A both are the square case.
* Ranks are 1-based and optimistic (ties never push the correct item down), see
  :mod:`runtime.metrics`: identical to the official numbers whenever there are no ties.
* DSL (dual softmax, ``runtime.dsl_rescale``): for text-to-video the scores are rescaled with a
  softmax over the **text axis (axis 0)** of ``sim`` -- each video's column becomes a
  distribution over queries, which demotes "hub" videos that match every caption. For
  video-to-text the same rule is applied to ``sim.T``, i.e. the softmax runs over the video axis.
  This is what the official evaluation does with ``sim`` and ``sim.T``. DSL uses every query
  at once, so it is a benchmark-time trick, not something a single search can use.
* Hard subsets: queries are the captions of the subset's videos, candidates are ALL evaluated
  videos (and for video-to-text the subset's videos rank ALL captions); DSL statistics are
  taken over the full query set, as in the full evaluation. Pair accuracy: the share of captions
  of a paired video that score their own video strictly above its confusable partner.
* Unreadable videos stop the run with an error naming the file; with ``skip_bad`` they are
  listed in the report and removed together with their captions (never replaced by zeros).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import numpy as np

from . import datasets
from .embedding_cache import EmbeddingCache, default_cache_dir, encode_texts_cached, encode_videos_cached
from .frame_similarity import dsl_rescale, similarity
from .metrics import V2T_CANDIDATES, metrics_from_ranks, ranks, v2t_ranks

log = logging.getLogger(__name__)

__all__ = ["evaluate", "eval_command", "DEFAULT_OUT", "DIRECTIONS"]

DEFAULT_OUT = Path("reports") / "eval"
#: Keys of the metric blocks, in report order.
DIRECTIONS = ("t2v", "v2t", "t2v_dsl", "v2t_dsl")
LABELS = {"t2v": "text→video", "v2t": "video→text", "t2v_dsl": "text→video (DSL)", "v2t_dsl": "video→text (DSL)"}
METRIC_KEYS = ("R1", "R5", "R10", "R50", "MdR", "MnR")
CONVENTIONS = {
    "similarity": "sim[t, v]: texts in rows, videos in columns; runtime.similarity with the bundle's "
                  "logit_scale, frame_mask_mode, tokens_per_frame, softmax_factor",
    "ranks": "1-based, optimistic: 1 + number of candidates scoring strictly higher (runtime.metrics)",
    "v2t": "each video ranks all captions; with candidates='captions' its best own caption counts, with "
           "'videos' captions are grouped per video (max) as in CLIP4Clip",
    "dsl": "t2v_dsl ranks dsl_rescale(sim) = sim * softmax(sim, axis=0 over texts); v2t_dsl ranks "
           "dsl_rescale(sim.T) (softmax over videos)",
    "subsets": "queries = captions of the subset's videos, candidates = all evaluated videos; DSL "
               "normalised over all queries",
    "pair_accuracy": "percent of captions of a paired video scoring their own video strictly above the partner",
    "skipped": "unreadable videos are removed with their captions (never zero-filled)",
}


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def _all_ranks(sim: np.ndarray, dsl_sim: np.ndarray, caption_video: np.ndarray,
               v2t_candidates: str) -> dict[str, np.ndarray]:
    """Per-query ranks of every direction (t2v: one per caption, v2t: one per video).

    ``dsl_sim`` is ``dsl_rescale(sim)`` (softmax over texts) for t2v; v2t DSL rescales ``sim.T``
    (softmax over videos) and ranks it laid out back as ``[Nt, Nv]``.
    """
    v2t_dsl = np.ascontiguousarray(dsl_rescale(np.ascontiguousarray(sim.T)).T)
    return {"t2v": ranks(sim, caption_video),
            "v2t": v2t_ranks(sim, caption_video, candidates=v2t_candidates),
            "t2v_dsl": ranks(dsl_sim, caption_video),
            "v2t_dsl": v2t_ranks(v2t_dsl, caption_video, candidates=v2t_candidates)}


def _pair_accuracy(score: np.ndarray, caption_video: np.ndarray, video_ids: Sequence[str],
                   pairs: dict[str, str], captions: Optional[np.ndarray] = None) -> Optional[dict[str, float]]:
    """Own video vs confusable partner for each caption of a paired video (optionally a subset)."""
    index = {v: i for i, v in enumerate(video_ids)}
    rows = np.arange(len(caption_video)) if captions is None else captions
    own, partner = [], []
    for t in rows:
        vid = video_ids[caption_video[t]]
        if vid in pairs:
            own.append(t)
            partner.append(index[pairs[vid]])
    if not own:
        return None
    own_rows = np.asarray(own)
    s_own = score[own_rows, caption_video[own_rows]]
    s_partner = score[own_rows, np.asarray(partner)]
    return {"accuracy": float(100.0 * np.count_nonzero(s_own > s_partner) / len(own)),
            "ties": int(np.count_nonzero(s_own == s_partner)), "n_queries": len(own)}


def _metric_block(rank_sets: dict[str, np.ndarray], t_rows=None, v_rows=None) -> dict[str, Any]:
    block = {}
    for name, r in rank_sets.items():
        sel = r if (t_rows if name.startswith("t2v") else v_rows) is None else \
            r[t_rows if name.startswith("t2v") else v_rows]
        block[name] = metrics_from_ranks(sel)
    return block


def _subset_results(rs: datasets.RetrievalSet, rank_sets, sim, dsl_sim) -> dict[str, Any]:
    subsets = rs.subsets
    if subsets is None:
        return {}
    cv = rs.caption_video
    position = {v: i for i, v in enumerate(rs.video_ids)}
    out: dict[str, Any] = {}
    for name, ids in subsets.groups.items():
        videos = np.array([position[v] for v in ids], dtype=np.int64)
        captions = np.flatnonzero(np.isin(cv, videos))
        entry: dict[str, Any] = {"n_videos": int(videos.size), "n_captions": int(captions.size),
                                 "ignored_ids_not_evaluated": subsets.ignored.get(name, 0)}
        if videos.size == 0:
            entry["note"] = "no evaluated video belongs to this subset"
        else:
            entry.update(_metric_block(rank_sets, captions, videos))
            pa = _pair_accuracy(sim, cv, rs.video_ids, subsets.pairs, captions)
            if pa is not None:
                entry["pair_accuracy"] = pa
                entry["pair_accuracy_dsl"] = _pair_accuracy(dsl_sim, cv, rs.video_ids, subsets.pairs, captions)
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------

def _unique_stem(out_dir: Path, stem: str) -> str:
    """Reports are per run: never overwrite an earlier run's files."""
    candidate, n = stem, 1
    while any((out_dir / f"{candidate}{suffix}").exists() for suffix in (".json", ".md", "-recall.png", "-sim.npy")):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def evaluate(
    bundle_dir,
    annotations,
    videos_dir,
    backend: str = "ort-cpu",
    precision: str = "fp32",
    out_dir=DEFAULT_OUT,
    cache_dir=None,
    skip_bad: bool = False,
    batch_size: int = 16,
    subsets=None,
    *,
    v2t_candidates: str = "captions",
    progress: bool = True,
    write: bool = True,
    plot: bool = True,
    save_similarity: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a bundle on an annotation file; write JSON + Markdown (+ PNG) reports.

    Args:
        bundle_dir: bundle directory (checked with ``open_bundle``).
        annotations: 1k-A CSV, generic CSV or JSONL (see :mod:`runtime.datasets`).
        videos_dir: folder with ``{video_id}.mp4`` (or another container extension).
        backend, precision, batch_size: passed to ``BundleEncoder``.
        out_dir: report folder (created).
        cache_dir: embedding cache root; ``None`` = :func:`default_cache_dir`, ``False`` = none.
        skip_bad: skip unreadable videos (and their captions) instead of stopping.
        subsets: subsets file; ``None`` = ``subsets.json`` beside the annotations if present,
            ``False`` = none.
        v2t_candidates: ``"captions"`` or ``"videos"``, see :func:`runtime.metrics.v2t_ranks`.
        write: write the report files (``False`` only computes).
        plot: also write the recall@K PNG.
        save_similarity: also write the ``[Nt, Nv]`` float32 similarity as ``{stem}-sim.npy``
            (rows/columns in the order of the report's ``queries`` / ``videos``), e.g. to compare
            two backends query by query.
        workers: video decoding threads (0 = decode in the calling thread).

    Returns:
        The report data (everything written to the JSON), with ``"files"`` naming what was
        written.

    Raises:
        AnnotationError, BundleError, VideoDecodeError (without ``skip_bad``), ValueError.
    """
    from .bundle import open_bundle
    from .encoder import BundleEncoder

    if v2t_candidates not in V2T_CANDIDATES:
        raise ValueError(f"v2t_candidates must be one of {V2T_CANDIDATES}, got {v2t_candidates!r}")
    started = datetime.now(timezone.utc)
    t_total = time.perf_counter()
    timing: dict[str, float] = {}

    full = datasets.load_retrieval_set(annotations, videos_dir, subsets, allow_missing=skip_bad)
    t0 = time.perf_counter()
    bundle = open_bundle(bundle_dir)
    timing["open_bundle"] = time.perf_counter() - t0
    cache = None
    if cache_dir is not False:
        cache = EmbeddingCache(default_cache_dir() if cache_dir is None else cache_dir, bundle.sha256, backend,
                               precision)

    with BundleEncoder(bundle, backend=backend, precision=precision, batch_size=batch_size) as encoder:
        t0 = time.perf_counter()
        videos = encode_videos_cached(encoder, full.paths(), cache, skip_bad=skip_bad,
                                      chunk_size=max(2 * batch_size, 16), progress=progress, workers=workers)
        timing["encode_videos"] = time.perf_counter() - t0
        timing["hash_and_cache_lookup"] = videos.seconds_hashing

        path_to_id = {str(p): v for v, p in full.video_paths.items()}
        skipped_ids = [path_to_id[p] for p, _ in videos.skipped]
        rs, removed = full.without_videos(skipped_ids)
        if not rs.video_ids:
            raise ValueError(f"no readable video left to evaluate ({len(videos.skipped)} skipped)")
        # encode_videos_cached keeps input order minus the skipped ones, i.e. rs.video_ids' order
        assert [str(p) for p in videos.paths] == [str(rs.video_paths[v]) for v in rs.video_ids]

        t0 = time.perf_counter()
        text_embeds, n_text_encoded = encode_texts_cached(encoder, rs.texts, cache, progress=progress)
        timing["encode_texts"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sim = similarity(text_embeds, videos.frame_embeds, videos.frame_mask, **bundle.similarity_args)
    timing["similarity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cv = rs.caption_video
    dsl_sim = dsl_rescale(sim)
    rank_sets = _all_ranks(sim, dsl_sim, cv, v2t_candidates)
    metrics = _metric_block(rank_sets)
    pairs = None
    if rs.subsets is not None and rs.subsets.pairs:
        pairs = {"all": _pair_accuracy(sim, cv, rs.video_ids, rs.subsets.pairs),
                 "all_dsl": _pair_accuracy(dsl_sim, cv, rs.video_ids, rs.subsets.pairs)}
    subset_results = _subset_results(rs, rank_sets, sim, dsl_sim)
    timing["metrics"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_total

    n_videos, n_texts = len(rs.video_ids), len(rs.captions)
    data: dict[str, Any] = {
        "kind": "ts2net-eval",
        "version": 1,
        "started": started.isoformat(timespec="seconds"),
        "bundle": {"path": str(Path(bundle_dir).resolve()), "id": bundle.sha256,
                   "model": bundle.manifest.get("model", {}).get("name"),
                   "source_checkpoint": (bundle.manifest.get("source_checkpoint") or {}).get("name"),
                   "valid": bundle.manifest.get("valid"), "similarity": bundle.similarity_args,
                   "max_frames": bundle.max_frames, "image_size": bundle.image_size, "embed_dim": bundle.embed_dim},
        "backend": backend,
        "precision": precision,
        "batch_size": batch_size,
        "dataset": {"annotations": str(Path(annotations).resolve()), "format": full.format,
                    "videos_dir": str(Path(videos_dir).resolve()),
                    "n_captions": len(full.captions), "n_videos": len(full.video_ids),
                    "n_captions_evaluated": n_texts, "n_videos_evaluated": n_videos,
                    "subsets": datasets.subset_summary(full.subsets)},
        "metrics": metrics,
        "subsets": subset_results,
        "pairs": pairs,
        "v2t_candidates": v2t_candidates,
        "conventions": CONVENTIONS,
        "skipped_videos": [{"video_id": v, "path": p, "reason": r} for v, (p, r) in zip(skipped_ids, videos.skipped)],
        "removed_queries": [{"video_id": c.video_id, "caption": c.text, "line": c.line} for c in removed],
        "timing_seconds": {k: round(v, 6) for k, v in timing.items()},
        "throughput": {
            "videos_encoded_per_second": (videos.n_encoded / videos.seconds_encoding
                                          if videos.n_encoded and videos.seconds_encoding > 0 else None),
            "similarity_pairs_per_second": n_videos * n_texts / timing["similarity"] if timing["similarity"] else None},
        "cache": {"dir": str(cache.dir) if cache else None, "videos_encoded": videos.n_encoded,
                  "videos_from_cache": videos.n_cached, "texts_encoded": n_text_encoded,
                  "texts_from_cache": n_texts - n_text_encoded if cache else 0},
        "videos": [{"video_id": v, "path": str(rs.video_paths[v]), "sha256": s,
                    "frames": int(m.sum()), "v2t_rank": int(r), "v2t_dsl_rank": int(rd)}
                   for v, s, m, r, rd in zip(rs.video_ids, videos.sha256, videos.frame_mask,
                                             rank_sets["v2t"], rank_sets["v2t_dsl"])],
        "queries": [{"video_id": c.video_id, "caption": c.text, "line": c.line, "t2v_rank": int(r),
                     "t2v_dsl_rank": int(rd), "t2v_top1": rs.video_ids[int(top)]}
                    for c, r, rd, top in zip(rs.captions, rank_sets["t2v"], rank_sets["t2v_dsl"],
                                             np.argmax(sim, axis=1))],
        "files": {},
    }
    if write:
        _write(data, Path(out_dir), rank_sets, subset_results, rs, plot, sim if save_similarity else None)
    return data


def _write(data: dict[str, Any], out_dir: Path, rank_sets, subset_results, rs, plot: bool,
           sim: Optional[np.ndarray]) -> None:
    from .reports import environment, write_report

    data["environment"] = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_name = Path(data["dataset"]["annotations"]).stem
    stem = _unique_stem(out_dir, f"eval-{ds_name}-{data['backend']}-{data['precision']}-"
                                 f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if plot:
        png = out_dir / f"{stem}-recall.png"
        _plot_recall(png, rank_sets, subset_results, rs, title=f"{ds_name} · {data['backend']} {data['precision']}")
        data["files"]["recall_png"] = png.name
    if sim is not None:
        from .embedding_cache import atomic_save_npy

        data["files"]["similarity_npy"] = atomic_save_npy(out_dir / f"{stem}-sim.npy", sim, fsync=False).name
    markdown = render_markdown(data)
    json_path, md_path = write_report(out_dir, stem, data, markdown)
    data["files"].update({"json": str(json_path), "markdown": str(md_path)})
    for key in ("recall_png", "similarity_npy"):
        if key in data["files"]:
            data["files"][key] = str(out_dir / data["files"][key])


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

def _plot_recall(path: Path, rank_sets, subset_results, rs, title: str) -> None:
    """Recall@K for every K (a CDF of the ranks): shows the whole distribution, not 4 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = 2 if subset_results else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    styles = {"t2v": ("C0", "-"), "v2t": ("C1", "-"), "t2v_dsl": ("C0", "--"), "v2t_dsl": ("C1", "--")}

    n_videos, n_texts = len(rs.video_ids), len(rs.captions)
    candidates = {"t2v": n_videos, "t2v_dsl": n_videos, "v2t": n_texts, "v2t_dsl": n_texts}

    def curve(ax, r, n_cand, label, color, style):
        k = np.arange(1, max(n_cand, 2) + 1)
        recall = 100.0 * np.searchsorted(np.sort(np.asarray(r)), k, side="right") / np.asarray(r).size
        ax.step(k, recall, where="post", color=color, linestyle=style, label=label)

    ax = axes[0, 0]
    for name, r in rank_sets.items():
        color, style = styles[name]
        curve(ax, r, candidates[name], f"{LABELS[name]} (R@1 {100.0 * np.mean(r <= 1):.1f})", color, style)
    ax.set_title(f"all queries — {title}", fontsize=10)
    if subset_results:
        ax2 = axes[0, 1]
        cv = rs.caption_video
        position = {v: i for i, v in enumerate(rs.video_ids)}
        for i, (name, entry) in enumerate(subset_results.items()):
            if not entry.get("n_captions"):
                continue
            videos = [position[v] for v in rs.subsets.groups[name]]
            rows = np.flatnonzero(np.isin(cv, videos))
            curve(ax2, rank_sets["t2v"][rows], n_videos, f"{name} t2v (n={rows.size})", f"C{i + 2}", "-")
            curve(ax2, rank_sets["t2v_dsl"][rows], n_videos, f"{name} t2v DSL", f"C{i + 2}", "--")
        curve(ax2, rank_sets["t2v"], n_videos, "all t2v", "C0", ":")
        ax2.set_title("hard subsets (candidates: all videos)", fontsize=10)
    right = max(n_videos, n_texts, 2)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlim(1, right)
        ax.set_xlabel("K")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if right <= 20 else ""))
        ax.set_ylabel("recall@K (%)")
        ax.set_ylim(0, 101)
        for k in (1, 5, 10, 50):
            if k <= right:
                ax.axvline(k, color="0.85", linewidth=0.8, zorder=0)
        ax.grid(True, which="major", axis="y", color="0.9")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 0.05 or value == 0 else f"{value:.3g}"
    return str(value)


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
            from .reports import environment_markdown

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


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

@click.command("eval")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Bundle directory (from `ts2net export`).")
@click.option("--csv", "annotations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Annotations: MSRVTT_JSFUSION_test.csv, a CSV (video_id, caption) or a JSONL file.")
@click.option("--videos", "videos_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of {video_id}.mp4 files.")
@click.option("--backend", default="ort-cpu", show_default=True, help="Inference backend (ort-cpu, ort-cuda, tensorrt).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32", show_default=True,
              help="fp32 (the reference numbers) unless asked; bf16 / int8 with --backend openvino.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(DEFAULT_OUT), show_default=True,
              help="Report folder (JSON + Markdown + PNG).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache root [default: $TS2NET_CACHE_DIR or ~/.cache/ts2net-deploy/embeddings].")
@click.option("--no-cache", is_flag=True, help="Encode everything; read and write no cache.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable videos (listed in the report, captions removed).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--subsets", "subsets_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Hard subsets JSON [default: subsets.json beside --csv, if present].")
@click.option("--v2t-candidates", type=click.Choice(list(V2T_CANDIDATES)), default="captions", show_default=True,
              help="Video-to-text convention with several captions per video.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Video decoding threads (0: decode in the main thread).")
@click.option("--save-sim", is_flag=True, help="Also write the similarity matrix as {report}-sim.npy.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def eval_command(bundle_dir, annotations, videos_dir, backend, precision, out_dir, cache_dir, no_cache, skip_bad,
                 batch_size, subsets_file, v2t_candidates, workers, save_sim, no_progress):
    """Text-to-video and video-to-text retrieval metrics (R@1/5/10/50, MdR, MnR, DSL) of a bundle."""
    from .backends import BackendUnavailable
    from .video import VideoDecodeError

    try:
        data = evaluate(bundle_dir, annotations, videos_dir, backend=backend, precision=precision,
                        out_dir=out_dir, cache_dir=False if no_cache else cache_dir, skip_bad=skip_bad,
                        batch_size=batch_size, subsets=subsets_file, v2t_candidates=v2t_candidates,
                        progress=not no_progress, save_similarity=save_sim, workers=workers)
    except VideoDecodeError as exc:
        raise click.ClickException(f"{exc}\n(pass --skip-bad to skip unreadable videos; they are listed in "
                                   "the report and their captions removed)") from exc
    except (ValueError, BackendUnavailable) as exc:  # AnnotationError, BundleError, bad settings, no video left
        raise click.ClickException(str(exc)) from exc
    click.echo(summary_text(data))
