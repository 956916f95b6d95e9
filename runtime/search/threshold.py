"""The threshold search: frame-level candidates in decreasing cosine order, exact TS2-Net re-scoring.

Because a video's score never exceeds ``C`` times its best weighted frame's cosine
(:mod:`runtime.search.frames`), once the k-th best *exact* score among the videos seen so far is
at least ``C`` times the cosine of the next frame whose video is still unseen, no unseen video can
enter the top k and the search stops. With an exact frame index the answer is the full scan's;
with an approximate one a miss needs the index to have skipped a video's frames entirely.

Numerics: the engine's cosines and the runtime's are computed by different code (and an engine
may store float16), so the stop rule compares against ``C * (cos + cos_tolerance)``, the engine's
recorded worst-case cosine error; this also covers the few float32 ulps by which a computed
weighted mean may exceed its largest term. The rule then never stops early on rounding, and no
unseen video can tie the k-th score, so ties are broken exactly as the scan breaks them (row order).

Fetching: ``fetch(queries, depth)`` returns the top-``depth`` frames; a query that has not stopped
when its frames run out is fetched again four times deeper (seen videos are skipped), up to the
engine's ``max_depth``; past that it re-scores every unseen video (``fallback``), so the answer is
always complete, and the report says the stop rule was not met.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..frame_similarity import _l2_normalize_last, similarity
from .frames import FRAME_BITS, LiveSet

__all__ = ["SearchStats", "Hits", "top_rows", "threshold_search", "exhaustive_search"]

Fetch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass
class SearchStats:
    """How one query was answered."""

    rescored: int = 0            # distinct videos (content keys) scored exactly
    frames_fetched: int = 0      # frames returned by the engine, all rounds
    rounds: int = 0              # fetches
    stop_rule_met: bool = False  # True: stopped by the bound (or every frame was seen)
    fallback: bool = False       # True: re-scored every unseen video after max_depth


@dataclass
class Hits:
    rows: np.ndarray             # [<=k] index rows, best first
    scores: np.ndarray           # [<=k] exact TS2-Net scores
    stats: SearchStats = field(default_factory=SearchStats)


def top_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, row) pairs, ties by row order: the scan's rule (a stable sort by -score)."""
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


class _Scorer:
    """Exact scores of content keys for one query (each key scored once, on one of its rows)."""

    def __init__(self, text: np.ndarray, frame_embeds, frame_mask, sim_args: dict, live: LiveSet):
        self.text, self.fe, self.fm, self.args, self.live = text, frame_embeds, frame_mask, sim_args, live
        self.key_scores: dict[int, float] = {}
        self.row_scores: list[tuple[float, int]] = []

    def score(self, keys: list[int]) -> None:
        rep = np.array([self.live.rows_of[k][0] for k in keys], np.int64)
        order = np.argsort(rep, kind="stable")
        s = similarity(self.text, self.fe[rep[order]], self.fm[rep[order]], **self.args)[0]
        for key, value in zip(np.asarray(keys)[order].tolist(), s.tolist()):
            self.key_scores[key] = value
            self.row_scores.extend((value, row) for row in self.live.rows_of[key])

    def kth(self, k: int) -> float:
        if len(self.row_scores) < k:
            return -np.inf
        return float(np.partition(np.fromiter((s for s, _ in self.row_scores), np.float64), -k)[-k])

    def hits(self, k: int, stats: SearchStats) -> Hits:
        scores = np.array([s for s, _ in self.row_scores], np.float32)
        rows = np.array([r for _, r in self.row_scores], np.int64)
        r, s = top_rows(scores, rows, k)
        return Hits(r, s, stats)


def exhaustive_search(text: np.ndarray, frame_embeds, frame_mask, sim_args: dict, k: int,
                      check_scores=None) -> list[Hits]:
    """The full scan (ground truth): every video scored, top k by the scan's tie rule."""
    sim = similarity(text, frame_embeds, frame_mask, **sim_args)
    if check_scores is not None:
        check_scores(sim)
    rows = np.arange(sim.shape[1], dtype=np.int64)
    out = []
    for row in sim:
        r, s = top_rows(row, rows, k)
        out.append(Hits(r, s, SearchStats(rescored=len(rows), stop_rule_met=True)))
    return out


def threshold_search(text: np.ndarray, frame_embeds, frame_mask, sim_args: dict, live: LiveSet, fetch: Fetch,
                     k: int, *, cos_tolerance: float, n_frames: int, max_depth: int,
                     initial_depth: int | None = None, group: int = 16, side=None) -> list[Hits]:
    """Top-k videos for each text ``[B, D]`` by the threshold rule over ``fetch`` (module docstring).

    ``n_frames``: vectors in the engine (a fetch of that depth has seen every frame);
    ``group``: new videos re-scored between two checks of the stop rule;
    ``side``: frames kept outside the engine (:class:`~runtime.search.frames.FrameGroups`), whose
    exact cosines are merged into every fetched list.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_rows = len(live.row_key)
    if n_rows == 0:
        return [Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), SearchStats(stop_rule_met=True))
                for _ in range(len(text))]
    text = np.asarray(text, np.float32)
    if k >= n_rows:  # every video is in the answer: nothing to prune
        return exhaustive_search(text, frame_embeds, frame_mask, sim_args, k)
    c = float(sim_args["logit_scale"])
    unit = _l2_normalize_last(np.array(text, np.float32, copy=True))
    live_keys = set(live.rows_of)
    t = int(frame_embeds.shape[1])
    # (k + 10) * T frames: enough for the rule to fire in one fetch on the benchmark data at k = 10
    # and k = 100 (measured: rounds = 1.0); a deeper first fetch only costs engine time
    depth = min(max(initial_depth or (k + 10) * t, 1), max_depth, max(n_frames, 1))
    scorers = [_Scorer(text[i:i + 1], frame_embeds, frame_mask, sim_args, live) for i in range(len(text))]
    stats = [SearchStats() for _ in text]
    active = list(range(len(text)))
    side_cos, side_labels = side.side_lists(unit) if side is not None and len(side) else (None, None)
    while active:
        cos, labels = fetch(unit[active], depth)
        still = []
        for j, q in enumerate(active):
            st, sc = stats[q], scorers[q]
            st.rounds += 1
            ok = labels[j] >= 0
            qc, ql = cos[j][ok], labels[j][ok]
            st.frames_fetched += int(ok.sum())
            exhausted = depth >= n_frames
            wc, wl = qc, ql
            if side_cos is not None:     # grouped frames up to the fetched horizon, merged in cosine order
                near = side_cos[q] >= qc[-1] if len(qc) and not exhausted else slice(None)
                wc, wl = np.concatenate([qc, side_cos[q][near]]), np.concatenate([ql, side_labels[near]])
                order = np.argsort(-wc, kind="stable")
                wc, wl = wc[order], wl[order]
            if _walk(wc, (wl >> np.int64(FRAME_BITS)).tolist(), sc, live_keys, k, c, cos_tolerance, group, st):
                continue
            if exhausted or (len(qc) and sc.kth(k) >= c * (float(qc[-1]) + cos_tolerance)):
                st.stop_rule_met = True
            elif depth >= max_depth:
                unseen = [key for key in live.keys.tolist() if key not in sc.key_scores]
                if unseen:
                    sc.score(unseen)
                    st.rescored += len(unseen)
                st.fallback = True
            else:
                still.append(q)
        active = still
        depth = min(depth * 4, max_depth, max(n_frames, 1))
    return [sc.hits(k, st) for sc, st in zip(scorers, stats)]


def _walk(cos: np.ndarray, keys: list[int], sc: _Scorer, live_keys: set, k: int, c: float, tol: float, group: int,
          st: SearchStats) -> bool:
    """Walk one fetched list (decreasing cosine); True when the stop rule fired inside it."""
    i, n = 0, len(keys)
    seen = sc.key_scores
    while True:
        while i < n and (keys[i] in seen or keys[i] not in live_keys):
            i += 1
        if i == n:
            return False
        if sc.kth(k) >= c * (float(cos[i]) + tol):   # cos[i]: the next unseen frame
            st.stop_rule_met = True
            return True
        new: list[int] = []
        want = max(group, k - len(sc.row_scores))
        j = i
        while j < n and len(new) < want:
            key = keys[j]
            if key in live_keys and key not in seen and key not in new:
                new.append(key)
            j += 1
        sc.score(new)
        st.rescored += len(new)
        i = j
