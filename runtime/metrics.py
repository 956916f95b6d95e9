"""Text-video retrieval metrics (R@K, median / mean rank) as reported by TS2-Net / CLIP4Clip.

Ranks are 1-based and *optimistic*: the rank of the correct candidate is
``1 + (number of candidates scoring strictly higher)``, so a candidate tied with the correct
one never pushes it down.

Why not simply port the official ``compute_metrics``? It does::

    sx = np.sort(-x, axis=1); d = np.diag(-x)[:, None]
    ind = np.where(sx - d == 0)[1]          # column positions of every zero

and then uses ``ind`` as "rank - 1" for each query. With no ties each row has exactly one
zero and ``ind`` is the optimistic 0-based rank of each row, identical to ours. With ties,
``np.where`` returns *every* zero of a row, so a row whose correct score is tied with k-1
other candidates contributes k entries (positions r, r+1, ..., r+k-1): ``len(ind)`` grows
beyond the number of queries, R@K is divided by that inflated count and the median / mean are
taken over the extra, pessimistic positions too. Conversely a row whose diagonal is NaN has no
zero at all and silently disappears. The result depends on the tie structure rather than on
one rank per query. Ties do happen in practice (float16 engines, quantised scores, duplicate
videos), so we define the metric the way the official code *intends* on tie-free inputs: one
optimistic rank per query. On tie-free inputs the numbers are identical to the official ones.
NaN scores are rejected instead of dropped.

For many captions per video:

* text-to-video: each caption is a query, ``gt_index[i]`` is the column of its video
  (:func:`retrieval_metrics` / :func:`ranks` with ``gt_index``).
* video-to-text: see :func:`v2t_ranks` for the two conventions offered. MSR-VTT 1k-A has one
  caption per video, so there both directions are the square case and ``v2t`` is just
  ``retrieval_metrics(sim.T)``.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = [
    "ranks",
    "metrics_from_ranks",
    "retrieval_metrics",
    "v2t_ranks",
    "v2t_metrics",
    "V2T_CANDIDATES",
]

#: Accepted values of ``candidates`` in :func:`v2t_ranks` / :func:`v2t_metrics`.
V2T_CANDIDATES = ("captions", "videos")

#: Rows handled at once when counting; bounds the boolean scratch to ``_ROW_CHUNK * Nc`` bytes
#: so a 10k x 100k similarity matrix (or memmap) does not need a 1 GB temporary.
_ROW_CHUNK = 1024


def _as_sim(sim, name: str = "sim") -> np.ndarray:
    """Validate a 2-D real score matrix without copying it (memmaps stay memmaps)."""
    s = sim if isinstance(sim, np.ndarray) else np.asarray(sim)
    if s.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [queries, candidates] matrix, got shape {list(s.shape)}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise TypeError(f"{name} must be a real (float or int) matrix, got dtype {s.dtype}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"{name} must have at least one query and one candidate, got shape {list(s.shape)}")
    return s


def _as_index(name: str, idx, length: int, upper: int, what: str) -> np.ndarray:
    """Validate an integer index vector of ``length`` entries in ``[0, upper)``."""
    a = np.asarray(idx)
    if a.ndim != 1 or a.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}] (one {what} per row of the matrix), "
                         f"got shape {list(a.shape)}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer indices, got dtype {a.dtype}")
    bad = (a < 0) | (a >= upper)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(a[i])} is out of range: must be in [0, {upper})")
    return a.astype(np.int64, copy=False)


def _reject_nan(block: np.ndarray, row_offset: int, name: str) -> None:
    if np.issubdtype(block.dtype, np.floating) and np.isnan(block).any():
        r, c = np.argwhere(np.isnan(block))[0]
        raise ValueError(f"{name} contains NaN (first at [{int(r) + row_offset}, {int(c)}]); "
                         "ranks would be undefined")


def ranks(sim, gt_index=None) -> np.ndarray:
    """1-based optimistic rank of each query's correct candidate.

    Args:
        sim: ``[Nq, Nc]`` scores, higher = more similar (e.g. text-to-video ``[Nt, Nv]``).
        gt_index: ``[Nq]`` column of each query's correct candidate. ``None`` means the square
            case, where query ``i``'s candidate is column ``i``.

    Returns:
        ``int64 [Nq]``: ``1 + #{j : sim[i, j] > sim[i, gt_index[i]]}``. Ties with the correct
        candidate do not count against it (see the module docstring for why this differs from
        the official ``np.where`` trick only when there are ties).
    """
    s = _as_sim(sim)
    nq, nc = s.shape
    if gt_index is None:
        if nq != nc:
            raise ValueError(
                f"sim has shape [{nq}, {nc}]: without gt_index the matrix must be square "
                "(query i matches column i); pass gt_index for the rectangular case")
        gt = np.arange(nq, dtype=np.int64)
    else:
        gt = _as_index("gt_index", gt_index, nq, nc, "candidate column")
    out = np.empty(nq, dtype=np.int64)
    for r0 in range(0, nq, _ROW_CHUNK):
        block = np.asarray(s[r0:r0 + _ROW_CHUNK])
        _reject_nan(block, r0, "sim")
        rows = np.arange(block.shape[0])
        correct = block[rows, gt[r0:r0 + block.shape[0]]]
        out[r0:r0 + block.shape[0]] = 1 + np.count_nonzero(block > correct[:, None], axis=1)
    return out


def metrics_from_ranks(rank_values) -> Dict[str, float]:
    """R@1/5/10/50 in percent, median (MdR) and mean (MnR) rank of 1-based ranks.

    MdR uses ``np.median``, so with an even number of queries it can be a half-integer, as in
    the official code.
    """
    r = np.asarray(rank_values)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {list(r.shape)}")
    if np.any(r < 1):
        raise ValueError("ranks are 1-based: every rank must be >= 1")
    result = {f"R{k}": float(100.0 * np.count_nonzero(r <= k) / r.size) for k in (1, 5, 10, 50)}
    result["MdR"] = float(np.median(r))
    result["MnR"] = float(np.mean(r))
    result["n_queries"] = float(r.size)
    return result


def retrieval_metrics(sim, gt_index=None) -> Dict[str, float]:
    """Retrieval metrics of ``sim`` (queries in rows, candidates in columns).

    Returns a dict with float values under ``"R1"``, ``"R5"``, ``"R10"``, ``"R50"`` (percent,
    0-100), ``"MdR"`` (median rank), ``"MnR"`` (mean rank) and ``"n_queries"``.
    For text-to-video pass the ``[Nt, Nv]`` matrix (with ``gt_index`` = video of each caption
    when there are several captions per video); for video-to-text with one caption per video
    pass ``sim.T``, with several use :func:`v2t_metrics`.
    """
    return metrics_from_ranks(ranks(sim, gt_index))


def _group_texts(video_of_text: np.ndarray, nv: int):
    """Order texts by video; fail if a video has no caption (its v2t rank would be undefined)."""
    counts = np.bincount(video_of_text, minlength=nv)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if missing.size > 10 else "")
        raise ValueError(f"video-to-text needs at least one caption per video; "
                         f"{missing.size} video(s) have none: {shown}")
    order = np.argsort(video_of_text, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return order, starts


def v2t_ranks(sim_t2v, video_of_text, *, candidates: str = "captions") -> np.ndarray:
    """1-based optimistic video-to-text rank of every video (column of ``sim_t2v``).

    Args:
        sim_t2v: ``[Nt, Nv]`` text-to-video scores (the matrix of :func:`similarity`).
        video_of_text: ``[Nt]`` video index of each caption. Every video needs at least one.
        candidates: what a video query ranks.

            * ``"captions"`` (default): all ``Nt`` captions; the video's rank is the best rank
              among its own captions, i.e. ``1 + #{captions of other videos scoring strictly
              above the video's best-scoring caption}``. Nothing is gained from having several
              correct captions other than having several chances.
            * ``"videos"``: the CLIP4Clip multi-sentence convention
              (``tensor_video_to_text_sim``): the captions of each video are merged into one
              candidate scored by their maximum, and the video is ranked among ``Nv`` such
              groups. Ranks are then at most ``Nv``.

    With one caption per video (``video_of_text`` a permutation) both conventions give the
    ranks of the transposed square problem.
    """
    s = _as_sim(sim_t2v, "sim_t2v")
    nt, nv = s.shape
    vot = _as_index("video_of_text", video_of_text, nt, nv, "video index")
    if candidates not in V2T_CANDIDATES:
        raise ValueError(f"candidates must be one of {', '.join(repr(c) for c in V2T_CANDIDATES)}; "
                         f"got {candidates!r}")
    order, starts = _group_texts(vot, nv)

    if candidates == "captions":
        # Best own-caption score per video: sim[t, vot[t]] maximised over each video's captions.
        own = np.empty(nt, dtype=np.float64)
        for r0 in range(0, nt, _ROW_CHUNK):
            block = np.asarray(s[r0:r0 + _ROW_CHUNK])
            _reject_nan(block, r0, "sim_t2v")
            own[r0:r0 + block.shape[0]] = block[np.arange(block.shape[0]), vot[r0:r0 + block.shape[0]]]
        best = np.maximum.reduceat(own[order], starts)
        above = np.zeros(nv, dtype=np.int64)
        for r0 in range(0, nt, _ROW_CHUNK):
            block = np.asarray(s[r0:r0 + _ROW_CHUNK])
            above += np.count_nonzero(block > best[None, :], axis=0)
        return 1 + above

    # "videos": group score G[g, v] = max over captions of video g of sim[t, v]; query v ranks
    # the Nv groups by G[:, v] and its own group is g = v.
    dense = np.asarray(s)
    _reject_nan(dense, 0, "sim_t2v")
    groups = np.maximum.reduceat(dense[order], starts, axis=0)      # [Nv groups, Nv videos]
    return ranks(groups.T)


def v2t_metrics(sim_t2v, video_of_text, *, candidates: str = "captions") -> Dict[str, float]:
    """Video-to-text metrics from the ``[Nt, Nv]`` text-to-video matrix; see :func:`v2t_ranks`.

    ``n_queries`` is the number of videos.
    """
    return metrics_from_ranks(v2t_ranks(sim_t2v, video_of_text, candidates=candidates))
