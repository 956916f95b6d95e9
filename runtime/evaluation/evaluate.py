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
from typing import Any, Optional

import numpy as np

from .. import datasets
from ..embedding_cache import EmbeddingCache, default_cache_dir, encode_texts_cached, encode_videos_cached
from ..frame_similarity import dsl_rescale, require_finite_scores, similarity
from ..metrics import V2T_CANDIDATES
from .plots import plot_recall
from .ranking import CONVENTIONS, DIRECTIONS, all_ranks, metric_block, pair_accuracy, subset_metrics
from .report import render_markdown

log = logging.getLogger(__name__)

__all__ = ["evaluate", "DEFAULT_OUT", "DIRECTIONS"]

DEFAULT_OUT = Path("reports") / "eval"


# --------------------------------------------------------------------------------------------
# metrics
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
    precision: Optional[str] = None,
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
    from ..backends import default_precision
    from ..bundle import open_bundle
    from ..encoder import BundleEncoder

    if v2t_candidates not in V2T_CANDIDATES:
        raise ValueError(f"v2t_candidates must be one of {V2T_CANDIDATES}, got {v2t_candidates!r}")
    started = datetime.now(timezone.utc)
    t_total = time.perf_counter()
    timing: dict[str, float] = {}

    full = datasets.load_retrieval_set(annotations, videos_dir, subsets, allow_missing=skip_bad)
    t0 = time.perf_counter()
    bundle = open_bundle(bundle_dir)
    timing["open_bundle"] = time.perf_counter() - t0
    precision = precision or default_precision(bundle, backend)
    cache = None
    if cache_dir is not False:
        cache = EmbeddingCache(default_cache_dir() if cache_dir is None else cache_dir, bundle.content_id, backend,
                               precision)

    with BundleEncoder(bundle, backend=backend, precision=precision, batch_size=batch_size) as encoder:
        text_precision = encoder.text_precision
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
    require_finite_scores(sim, text_embeds, videos.frame_embeds, text_labels=rs.texts, video_labels=rs.video_ids,
                          text_source=f"text graph of {bundle.path} on {backend} {precision}",
                          video_source=f"video graph of {bundle.path} on {backend} {precision}, or the embedding "
                                       f"cache {cache.dir if cache else '(none)'}")
    timing["similarity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cv = rs.caption_video
    dsl_sim = dsl_rescale(sim)
    rank_sets = all_ranks(sim, dsl_sim, cv, v2t_candidates)
    metrics = metric_block(rank_sets)
    pairs = None
    if rs.subsets is not None and rs.subsets.pairs:
        pairs = {"all": pair_accuracy(sim, cv, rs.video_ids, rs.subsets.pairs),
                 "all_dsl": pair_accuracy(dsl_sim, cv, rs.video_ids, rs.subsets.pairs)}
    subset_results = subset_metrics(rs, rank_sets, sim, dsl_sim)
    timing["metrics"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_total

    n_videos, n_texts = len(rs.video_ids), len(rs.captions)
    data: dict[str, Any] = {
        "kind": "ts2net-eval",
        "version": 1,
        "started": started.isoformat(timespec="seconds"),
        "bundle": {"path": str(Path(bundle_dir).resolve()), "id": bundle.content_id,
                   "model": bundle.manifest.get("model", {}).get("name"),
                   "source_checkpoint": (bundle.manifest.get("source_checkpoint") or {}).get("name"),
                   "valid": bundle.manifest.get("valid"), "similarity": bundle.similarity_args,
                   "max_frames": bundle.max_frames, "image_size": bundle.image_size, "embed_dim": bundle.embed_dim},
        "backend": backend,
        "precision": precision,
        "text_precision": text_precision,
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
    from ..reports import environment, write_report

    data["environment"] = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    ds_name = Path(data["dataset"]["annotations"]).stem
    stem = _unique_stem(out_dir, f"eval-{ds_name}-{data['backend']}-{data['precision']}-"
                                 f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if plot:
        png = out_dir / f"{stem}-recall.png"
        plot_recall(png, rank_sets, subset_results, rs, title=f"{ds_name} · {data['backend']} {data['precision']}")
        data["files"]["recall_png"] = png.name
    if sim is not None:
        from ..embedding_cache import atomic_save_npy

        data["files"]["similarity_npy"] = atomic_save_npy(out_dir / f"{stem}-sim.npy", sim, fsync=False).name
    markdown = render_markdown(data)
    json_path, md_path = write_report(out_dir, stem, data, markdown)
    data["files"].update({"json": str(json_path), "markdown": str(md_path)})
    for key in ("recall_png", "similarity_npy"):
        if key in data["files"]:
            data["files"][key] = str(out_dir / data["files"][key])
