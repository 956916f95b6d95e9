"""Ranks and metric blocks of a similarity matrix: full set, DSL, hard subsets, pair accuracy."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .. import datasets
from ..frame_similarity import dsl_rescale
from ..metrics import metrics_from_ranks, ranks, v2t_ranks

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



def all_ranks(sim: np.ndarray, dsl_sim: np.ndarray, caption_video: np.ndarray,
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


def pair_accuracy(score: np.ndarray, caption_video: np.ndarray, video_ids: Sequence[str],
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


def metric_block(rank_sets: dict[str, np.ndarray], t_rows=None, v_rows=None) -> dict[str, Any]:
    block = {}
    for name, r in rank_sets.items():
        sel = r if (t_rows if name.startswith("t2v") else v_rows) is None else \
            r[t_rows if name.startswith("t2v") else v_rows]
        block[name] = metrics_from_ranks(sel)
    return block


def subset_metrics(rs: datasets.RetrievalSet, rank_sets, sim, dsl_sim) -> dict[str, Any]:
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
            entry.update(metric_block(rank_sets, captions, videos))
            pa = pair_accuracy(sim, cv, rs.video_ids, subsets.pairs, captions)
            if pa is not None:
                entry["pair_accuracy"] = pa
                entry["pair_accuracy_dsl"] = pair_accuracy(dsl_sim, cv, rs.video_ids, subsets.pairs, captions)
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------
