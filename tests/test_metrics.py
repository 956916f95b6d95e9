"""Tests of runtime.metrics against references written differently from the module.

The module counts strictly-greater candidates; the references here sort each row and look for
the first position holding the correct score (a per-row loop), and a re-statement of the
official ``compute_metrics`` recipe is used to show where it agrees (no ties) and where it
does not (ties).
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime.metrics import (
    metrics_from_ranks,
    ranks,
    retrieval_metrics,
    v2t_metrics,
    v2t_ranks,
)


# ------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------

def ref_ranks(sim, gt=None):
    sim = np.asarray(sim)
    gt = range(sim.shape[0]) if gt is None else gt
    out = []
    for row, g in zip(sim, gt):
        ordered = sorted(row.tolist(), reverse=True)
        out.append(ordered.index(row[g]) + 1)   # first (best) position holding that value
    return np.array(out)


def ref_metrics(r):
    r = np.asarray(r, dtype=float)
    return {
        "R1": 100.0 * np.mean(r <= 1), "R5": 100.0 * np.mean(r <= 5),
        "R10": 100.0 * np.mean(r <= 10), "R50": 100.0 * np.mean(r <= 50),
        "MdR": float(np.median(r)), "MnR": float(np.mean(r)), "n_queries": float(len(r)),
    }


def official_style_positions(x):
    """The official recipe: every position where the sorted row equals the diagonal (0-based)."""
    desc = -np.sort(-x, axis=1)
    hits = np.argwhere(desc == np.diag(x)[:, None])
    return hits[:, 1]


def assert_metrics_equal(got, want):
    assert set(got) == {"R1", "R5", "R10", "R50", "MdR", "MnR", "n_queries"}
    for k in want:
        assert isinstance(got[k], float), k
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


# ------------------------------------------------------------------------------------------
# square case
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, seed", [(7, 0), (64, 1), (300, 2)])
def test_random_float_matches_reference_and_official(n, seed):
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((n, n)).astype(np.float32)
    sim[np.arange(n), np.arange(n)] += 1.5                     # make the metrics non-trivial
    r = ranks(sim)
    assert r.dtype == np.int64
    np.testing.assert_array_equal(r, ref_ranks(sim))
    assert_metrics_equal(retrieval_metrics(sim), ref_metrics(ref_ranks(sim)))
    # Without ties the official recipe yields exactly one position per row, = our rank - 1.
    np.testing.assert_array_equal(official_style_positions(sim) + 1, r)


@pytest.mark.parametrize("seed", range(5))
def test_integer_matrices_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    n = 40
    sim = rng.integers(0, 6, size=(n, n))                       # heavy ties
    np.testing.assert_array_equal(ranks(sim), ref_ranks(sim))
    np.testing.assert_array_equal(ranks(sim.astype(np.float16)), ref_ranks(sim))
    assert_metrics_equal(retrieval_metrics(sim), ref_metrics(ref_ranks(sim)))


def test_official_recipe_overcounts_ties():
    # Row 0: correct score 3 tied with two others -> official records positions 0, 1, 2.
    sim = np.array([[3, 3, 3, 1],
                    [0, 5, 1, 1],
                    [9, 0, 2, 0],
                    [0, 0, 0, 1]], dtype=float)
    pos = official_style_positions(sim)
    assert len(pos) == 6                                        # 4 queries, 6 "ranks"
    np.testing.assert_array_equal(ranks(sim), [1, 1, 2, 1])     # one optimistic rank per query


def test_all_equal_scores_are_optimistic():
    sim = np.zeros((10, 10), dtype=np.float32)
    np.testing.assert_array_equal(ranks(sim), np.ones(10))
    assert retrieval_metrics(sim)["R1"] == 100.0


def test_perfect_matrix():
    n = 60
    sim = np.random.default_rng(3).random((n, n)) + 2.0 * np.eye(n)
    m = retrieval_metrics(sim)
    assert m == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.0, "MnR": 1.0,
                 "n_queries": 60.0}


def test_worst_case_matrix():
    n = 60
    sim = np.random.default_rng(4).random((n, n)) - 2.0 * np.eye(n)  # diagonal always last
    np.testing.assert_array_equal(ranks(sim), np.full(n, n))
    m = retrieval_metrics(sim)
    assert m == {"R1": 0.0, "R5": 0.0, "R10": 0.0, "R50": 0.0, "MdR": 60.0, "MnR": 60.0,
                 "n_queries": 60.0}


def test_hand_computed_small_case():
    # ranks 1, 2, 3, 4 -> R1 = 25, R5 = 100, MdR = 2.5 (median of an even count), MnR = 2.5
    sim = np.array([[9, 1, 2, 3],
                    [5, 4, 1, 0],
                    [7, 6, 5, 0],
                    [4, 3, 2, 1]], dtype=np.float32)
    np.testing.assert_array_equal(ranks(sim), [1, 2, 3, 4])
    assert retrieval_metrics(sim) == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "R50": 100.0,
                                      "MdR": 2.5, "MnR": 2.5, "n_queries": 4.0}


def test_r50_boundary():
    # 120 candidates; query i's correct candidate is beaten by exactly i others: rank i + 1.
    n = 120
    sim = np.zeros((n, n))
    for i in range(n):
        sim[i] = -np.arange(n)                                  # candidate j scores -j
        sim[i, i] = -(i - 0.5) if i else 1.0                    # i candidates (0..i-1) above
    r = ranks(sim)
    np.testing.assert_array_equal(r, np.arange(1, n + 1))
    m = retrieval_metrics(sim)
    assert m["R50"] == pytest.approx(100 * 50 / 120)
    assert m["R10"] == pytest.approx(100 * 10 / 120)
    assert m["MdR"] == 60.5 and m["MnR"] == 60.5


# ------------------------------------------------------------------------------------------
# rectangular / multi-caption
# ------------------------------------------------------------------------------------------

def test_multi_caption_t2v_with_gt_index():
    rng = np.random.default_rng(5)
    nv = 30
    video_of_text = np.repeat(np.arange(nv), rng.integers(1, 5, nv))
    rng.shuffle(video_of_text)
    sim = rng.integers(0, 20, size=(len(video_of_text), nv)).astype(np.float32)
    np.testing.assert_array_equal(ranks(sim, video_of_text), ref_ranks(sim, video_of_text))
    m = retrieval_metrics(sim, gt_index=video_of_text)
    assert_metrics_equal(m, ref_metrics(ref_ranks(sim, video_of_text)))
    assert m["n_queries"] == float(len(video_of_text))


def test_rectangular_hand_case():
    # 3 captions, 2 videos; captions 0, 1 -> video 0, caption 2 -> video 1.
    sim = np.array([[0.9, 0.1],
                    [0.2, 0.8],
                    [0.3, 0.7]])
    np.testing.assert_array_equal(ranks(sim, [0, 0, 1]), [1, 2, 1])


def ref_v2t_captions(sim, vot):
    out = []
    for v in range(sim.shape[1]):
        col = sim[:, v]
        own = [ref_ranks(col[None, :], [t])[0] for t in np.flatnonzero(vot == v)]
        out.append(min(own))
    return np.array(out)


def test_v2t_best_caption_convention_hand_case():
    # texts 0,1 describe video 0; texts 2,3,4 describe video 1; text 5 describes video 2.
    vot = np.array([0, 0, 1, 1, 1, 2])
    sim = np.array([
        # v0    v1    v2
        [0.50, 0.10, 0.20],
        [0.30, 0.60, 0.10],
        [0.40, 0.55, 0.90],
        [0.45, 0.20, 0.95],
        [0.20, 0.30, 0.00],
        [0.60, 0.70, 0.80],
    ])
    # v0: best own caption is text 0 (0.50); only text 5 (0.60) is above -> rank 2.
    # v1: best own is text 2 (0.55); texts 1 (0.60) and 5 (0.70) above -> rank 3.
    # v2: own text 5 (0.80); texts 2 (0.90) and 3 (0.95) above -> rank 3.
    np.testing.assert_array_equal(v2t_ranks(sim, vot), [2, 3, 3])
    np.testing.assert_array_equal(v2t_ranks(sim, vot), ref_v2t_captions(sim, vot))
    m = v2t_metrics(sim, vot)
    assert m["n_queries"] == 3.0 and m["R1"] == 0.0 and m["MdR"] == 3.0
    assert m["MnR"] == pytest.approx(8 / 3)
    # CLIP4Clip convention: candidates are caption groups scored by their max.
    # v0: groups (max of col 0) = [0.50, 0.45, 0.60] -> own 0.50 beaten by group 2 -> rank 2.
    # v1: groups (col 1) = [0.60, 0.55, 0.70] -> own 0.55 last -> rank 3.
    # v2: groups (col 2) = [0.20, 0.95, 0.80] -> own 0.80 beaten by group 1 -> rank 2.
    np.testing.assert_array_equal(v2t_ranks(sim, vot, candidates="videos"), [2, 3, 2])


def ref_v2t_clip4clip(sim, vot):
    """Build the padded [Nv, max_caps, Nv] tensor like CLIP4Clip, max over captions, rank."""
    nv = sim.shape[1]
    caps = [np.flatnonzero(vot == v) for v in range(nv)]
    width = max(len(c) for c in caps)
    tensor = np.full((nv, width, nv), -np.inf)
    for v, c in enumerate(caps):
        tensor[v, :len(c)] = sim[c]
    grouped = tensor.max(axis=1).T                             # [query video, candidate group]
    return ref_ranks(grouped)


@pytest.mark.parametrize("seed", range(3))
def test_v2t_random_against_references(seed):
    rng = np.random.default_rng(200 + seed)
    nv = 25
    vot = np.repeat(np.arange(nv), rng.integers(1, 6, nv))
    rng.shuffle(vot)
    sim = rng.integers(0, 8, size=(len(vot), nv)).astype(np.float32)   # many ties
    np.testing.assert_array_equal(v2t_ranks(sim, vot), ref_v2t_captions(sim, vot))
    np.testing.assert_array_equal(v2t_ranks(sim, vot, candidates="videos"),
                                  ref_v2t_clip4clip(sim, vot))
    assert_metrics_equal(v2t_metrics(sim, vot), ref_metrics(ref_v2t_captions(sim, vot)))


def test_v2t_one_caption_per_video_is_transpose():
    rng = np.random.default_rng(7)
    n = 50
    sim = rng.standard_normal((n, n))
    perm = rng.permutation(n)
    sim_t2v = sim[perm]                         # text k describes video perm[k]
    expected = ranks(sim.T)
    np.testing.assert_array_equal(v2t_ranks(sim_t2v, perm), expected)
    np.testing.assert_array_equal(v2t_ranks(sim_t2v, perm, candidates="videos"), expected)
    assert v2t_metrics(np.asarray(sim), np.arange(n)) == retrieval_metrics(sim.T)


def test_large_matrix_row_chunking():
    # More rows than the internal row block, with ties, against the reference.
    rng = np.random.default_rng(8)
    nt, nv = 2500, 40
    vot = rng.integers(0, nv, nt)
    vot[:nv] = np.arange(nv)
    sim = rng.integers(0, 50, size=(nt, nv)).astype(np.float32)
    np.testing.assert_array_equal(ranks(sim, vot), ref_ranks(sim, vot))
    np.testing.assert_array_equal(v2t_ranks(sim, vot), ref_v2t_captions(sim, vot))


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(ValueError, match=r"square.*gt_index"):
        ranks(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        ranks(np.zeros(3))
    with pytest.raises(ValueError, match=r"gt_index must have shape \[3\].*got shape \[2\]"):
        ranks(np.zeros((3, 4)), [0, 1])
    with pytest.raises(ValueError, match=r"gt_index\[1\] = 4 is out of range.*\[0, 4\)"):
        ranks(np.zeros((3, 4)), [0, 4, 1])
    with pytest.raises(TypeError, match="integer"):
        ranks(np.zeros((2, 2)), [0.5, 1.0])
    bad = np.zeros((3, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[2, 1\]"):
        retrieval_metrics(bad)
    with pytest.raises(ValueError, match=r"at least one caption.*video\(s\) have none: 2"):
        v2t_ranks(np.zeros((3, 3)), [0, 1, 1])
    with pytest.raises(ValueError, match=r"video_of_text must have shape \[3\]"):
        v2t_metrics(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match=r"'captions', 'videos'.*'texts'"):
        v2t_ranks(np.zeros((2, 2)), [0, 1], candidates="texts")
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks([0, 1])
    with pytest.raises(ValueError, match="at least one"):
        retrieval_metrics(np.zeros((0, 0)))


def test_runtime_export():
    import runtime

    assert runtime.retrieval_metrics is retrieval_metrics
