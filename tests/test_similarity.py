"""Tests of runtime.similarity (runtime/frame_similarity.py) against a deliberately naive reference.

The reference below is written independently of the module: float64, one video at a time, no
chunking, and the "official" mask is derived the way the official code produces it (tile the
frame mask M times over the T*M tokens, keep every M-th token) rather than from the closed-form
index formula the module uses.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from runtime.frame_similarity import (
    DEFAULT_TEXT_CHUNK,
    DEFAULT_VIDEO_CHUNK,
    dsl_rescale,
    effective_frame_mask,
    similarity,
)

T = 12
M = 4


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------

def ref_official_mask(frame_mask: np.ndarray, tokens_per_frame: int) -> np.ndarray:
    tiled = np.tile(frame_mask, (1, tokens_per_frame))       # token j gets bit j % T
    return tiled[:, ::tokens_per_frame]                       # keep token f*M of each frame


def ref_similarity(text, frames, mask, logit_scale, mode, tokens_per_frame=4, factor=4.0):
    text = np.asarray(text, dtype=np.float64)
    frames = np.asarray(frames, dtype=np.float64)
    mask = np.asarray(mask)
    m = ref_official_mask(mask, tokens_per_frame) if mode == "official" else mask
    nt, nv = text.shape[0], frames.shape[0]
    out = np.zeros((nt, nv))
    for ti in range(nt):
        tv = text[ti] / np.linalg.norm(text[ti])
        for vi in range(nv):
            s = np.array([frames[vi, f] @ tv / np.linalg.norm(frames[vi, f])
                          for f in range(frames.shape[1])])
            u = s * m[vi]
            u = u / np.linalg.norm(u)
            u = np.where(m[vi] == 0, -1e18, u)
            z = factor * u
            w = np.exp(z - z.max())
            w = w / w.sum()
            out[ti, vi] = logit_scale * np.sum(w * s)
    return out


def ref_dsl(sim):
    sim = np.asarray(sim, dtype=np.float64)
    e = np.exp(sim - sim.max(axis=0, keepdims=True))
    return sim * e / e.sum(axis=0, keepdims=True)


def prefix_mask(valid_counts, t=T):
    valid_counts = np.asarray(valid_counts)
    return (np.arange(t)[None, :] < valid_counts[:, None]).astype(np.int64)


def make_data(nt, nv, d, valid_counts, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((nt, d)).astype(np.float32) * 3.0
    # A shared component makes frame/text cosines spread out instead of all being ~0.
    base = rng.standard_normal(d)
    frames = (rng.standard_normal((nv, T, d)) + 0.7 * base).astype(np.float32) * 2.0
    text += (0.7 * base).astype(np.float32)
    mask = prefix_mask(np.resize(valid_counts, nv))
    return text, frames, mask


# ------------------------------------------------------------------------------------------
# effective_frame_mask
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "valid, expected_frames",
    [
        (12, list(range(12))),
        (11, list(range(12))),                    # padded frame 11 counts
        (5, [0, 1, 3, 4, 6, 7, 9, 10]),           # real frame 2 does not, padded 6,7,9,10 do
        (1, [0, 3, 6, 9]),
    ],
)
def test_effective_mask_official_examples(valid, expected_frames):
    mask = prefix_mask([valid])
    eff = effective_frame_mask(mask, "official", tokens_per_frame=4)
    assert eff.shape == (1, 12)
    assert np.flatnonzero(eff[0]).tolist() == expected_frames


def test_effective_mask_fixed_is_identity_and_keeps_dtype():
    mask = prefix_mask([1, 5, 11, 12]).astype(np.int32)
    eff = effective_frame_mask(mask, "fixed")
    assert eff.dtype == np.int32
    np.testing.assert_array_equal(eff, mask)
    eff[0, 5] = 1                                # a copy, not a view of the caller's mask
    assert mask[0, 5] == 0


@pytest.mark.parametrize("t, m", [(12, 4), (12, 1), (8, 3), (7, 4), (12, 13), (16, 8)])
def test_effective_mask_official_matches_tiling(t, m):
    rng = np.random.default_rng(t * 100 + m)
    mask = (rng.random((20, t)) < 0.6).astype(np.int64)
    np.testing.assert_array_equal(
        effective_frame_mask(mask, "official", tokens_per_frame=m), ref_official_mask(mask, m))


def test_effective_mask_accepts_bool_and_1d():
    mask = np.arange(12) < 5
    eff = effective_frame_mask(mask, "official")
    assert eff.dtype == np.bool_ and eff.shape == (12,)
    assert np.flatnonzero(eff).tolist() == [0, 1, 3, 4, 6, 7, 9, 10]


def test_effective_mask_errors():
    with pytest.raises(ValueError, match=r"'official', 'fixed'.*'foo'"):
        effective_frame_mask(prefix_mask([3]), "foo")
    with pytest.raises(ValueError, match="only 0"):
        effective_frame_mask(np.array([[1, 2, 0]]), "fixed")
    with pytest.raises(ValueError, match="tokens_per_frame"):
        effective_frame_mask(prefix_mask([3]), "official", tokens_per_frame=0)
    with pytest.raises(ValueError, match=r"\[Nv, T\]"):
        effective_frame_mask(np.ones((2, 3, 4)), "fixed")


# ------------------------------------------------------------------------------------------
# similarity vs the reference
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_similarity_matches_reference(mode):
    # Nt, Nv not multiples of the chunk sizes; every video length of interest present.
    text, frames, mask = make_data(nt=23, nv=19, d=16, valid_counts=[1, 5, 11, 12, 3, 8, 2])
    got = similarity(text, frames, mask, 100.0, mode, text_chunk=7, video_chunk=4)
    want = ref_similarity(text, frames, mask, 100.0, mode)
    assert got.dtype == np.float32 and got.shape == (23, 19)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)


def test_modes_differ_only_for_affected_videos():
    text, frames, mask = make_data(nt=6, nv=4, d=8, valid_counts=[12, 11, 5, 1], seed=3)
    off = similarity(text, frames, mask, 100.0, "official")
    fix = similarity(text, frames, mask, 100.0, "fixed")
    np.testing.assert_array_equal(off[:, 0], fix[:, 0])      # full video: same mask
    for v in (1, 2, 3):                                       # effective masks differ
        assert np.abs(off[:, v] - fix[:, v]).max() > 1e-3


def test_nondefault_tokens_per_frame_and_softmax_factor():
    text, frames, mask = make_data(nt=9, nv=7, d=12, valid_counts=[2, 7, 12, 9], seed=5)
    got = similarity(text, frames, mask, 50.0, "official", tokens_per_frame=3,
                     softmax_factor=10.0, text_chunk=4, video_chunk=3)
    want = ref_similarity(text, frames, mask, 50.0, "official", tokens_per_frame=3, factor=10.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_large_softmax_factor_does_not_overflow():
    text, frames, mask = make_data(nt=5, nv=6, d=8, valid_counts=[1, 4, 12], seed=6)
    got = similarity(text, frames, mask, 100.0, "fixed", softmax_factor=500.0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_similarity(text, frames, mask, 100.0, "fixed", factor=500.0),
                               rtol=1e-5, atol=2e-4)


def test_logit_scale_is_a_plain_multiplier():
    text, frames, mask = make_data(nt=8, nv=5, d=8, valid_counts=[3, 12], seed=7)
    a = similarity(text, frames, mask, 1.0, "official")
    b = similarity(text, frames, mask, 100.0, "official")
    np.testing.assert_allclose(b, 100.0 * a, rtol=1e-6, atol=1e-6)
    # with logit_scale=1 the score is a weighted mean of cosines
    assert np.all(np.abs(a) <= 1.0 + 1e-6)


def test_chunking_invariance():
    text, frames, mask = make_data(nt=41, nv=37, d=32, valid_counts=[1, 5, 11, 12, 6], seed=8)
    base = similarity(text, frames, mask, 100.0, "official", text_chunk=1000, video_chunk=1000)
    for tc, vc in [(1, 1), (3, 5), (16, 16), (40, 1), (1, 36), (DEFAULT_TEXT_CHUNK, DEFAULT_VIDEO_CHUNK)]:
        got = similarity(text, frames, mask, 100.0, "official", text_chunk=tc, video_chunk=vc)
        # Each score only depends on its own (text, video) pair; the only possible source of
        # difference is the BLAS kernel choosing another summation order for another block shape.
        np.testing.assert_allclose(got, base, rtol=1e-6, atol=1e-5, err_msg=f"chunks {tc}x{vc}")


def test_out_memmap(tmp_path):
    text, frames, mask = make_data(nt=13, nv=11, d=8, valid_counts=[1, 5, 11, 12], seed=9)
    path = tmp_path / "sim.f32"
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(13, 11))
    ret = similarity(text, frames, mask, 100.0, "official", text_chunk=4, video_chunk=3, out=out)
    assert ret is out
    out.flush()
    del out, ret
    back = np.memmap(path, dtype=np.float32, mode="r", shape=(13, 11))
    np.testing.assert_array_equal(
        back, similarity(text, frames, mask, 100.0, "official", text_chunk=4, video_chunk=3))


def test_frames_from_memmap(tmp_path):
    text, frames, mask = make_data(nt=5, nv=9, d=8, valid_counts=[2, 12], seed=10)
    fpath = tmp_path / "frames.f16"
    fm = np.memmap(fpath, dtype=np.float16, mode="w+", shape=frames.shape)
    fm[:] = frames
    fm.flush()
    fm = np.memmap(fpath, dtype=np.float16, mode="r", shape=frames.shape)
    got = similarity(text, fm, mask, 100.0, "fixed", video_chunk=2)
    want = similarity(text, frames.astype(np.float16).astype(np.float32), mask, 100.0, "fixed",
                      video_chunk=2)
    np.testing.assert_array_equal(got, want)


def test_float16_inputs_are_upcast():
    text, frames, mask = make_data(nt=10, nv=8, d=16, valid_counts=[1, 5, 11, 12], seed=11)
    t16, f16 = text.astype(np.float16), frames.astype(np.float16)
    got = similarity(t16, f16, mask, 100.0, "official", text_chunk=3, video_chunk=3)
    assert got.dtype == np.float32
    # Upcasting float16 -> float32 is exact, so this must match the float32 path on those values.
    np.testing.assert_array_equal(
        got, similarity(t16.astype(np.float32), f16.astype(np.float32), mask, 100.0, "official",
                        text_chunk=3, video_chunk=3))
    np.testing.assert_allclose(got, ref_similarity(t16, f16, mask, 100.0, "official"),
                               rtol=1e-5, atol=2e-4)


def test_float64_and_bool_mask_inputs():
    text, frames, mask = make_data(nt=6, nv=5, d=8, valid_counts=[4, 12], seed=12)
    got = similarity(text.astype(np.float64), frames.astype(np.float64), mask.astype(bool), 100.0,
                     "official")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_similarity(text, frames, mask, 100.0, "official"),
                               rtol=1e-5, atol=2e-4)


def test_zero_padding_frames_do_not_make_nan():
    text, frames, mask = make_data(nt=4, nv=3, d=8, valid_counts=[11, 5, 1], seed=13)
    frames[mask == 0] = 0.0                     # zero-filled padding, as a feature cache might store
    for mode in ("official", "fixed"):
        got = similarity(text, frames, mask, 100.0, mode)
        assert np.isfinite(got).all()
    # In "fixed" mode padding never contributes, so zeroing it changes nothing.
    text2, frames2, _ = make_data(nt=4, nv=3, d=8, valid_counts=[11, 5, 1], seed=13)
    np.testing.assert_allclose(similarity(text, frames, mask, 100.0, "fixed"),
                               similarity(text2, frames2, mask, 100.0, "fixed"), rtol=1e-6, atol=1e-5)


def test_empty_text_set():
    _, frames, mask = make_data(nt=1, nv=3, d=8, valid_counts=[12], seed=14)
    got = similarity(np.zeros((0, 8), np.float32), frames, mask, 100.0, "fixed")
    assert got.shape == (0, 3)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

def _good(nt=3, nv=4, d=8):
    return make_data(nt=nt, nv=nv, d=d, valid_counts=[12, 5], seed=20)


def test_error_dimension_mismatch():
    text, frames, mask = _good()
    with pytest.raises(ValueError, match=r"frame_embeds.*D=8.*expected \[4, 12, 8\], got \[4, 12, 6\]"):
        similarity(text, frames[..., :6], mask, 100.0, "official")


def test_error_mask_shape():
    text, frames, mask = _good()
    with pytest.raises(ValueError, match=r"frame_mask.*\[4, 12\].*got \[4, 10\]"):
        similarity(text, frames, mask[:, :10], 100.0, "official")
    with pytest.raises(ValueError, match=r"frame_mask.*\[4, 12\].*got \[3, 12\]"):
        similarity(text, frames, mask[:3], 100.0, "official")


def test_error_rank_and_dtype():
    text, frames, mask = _good()
    with pytest.raises(ValueError, match=r"text_embeds.*\[Nt, D\].*got shape \[8\]"):
        similarity(text[0], frames, mask, 100.0, "official")
    with pytest.raises(ValueError, match=r"frame_embeds.*\[Nv, T, D\].*got shape \[4, 96\]"):
        similarity(text, frames.reshape(4, -1), mask, 100.0, "official")
    with pytest.raises(TypeError, match="text_embeds.*floating.*int64"):
        similarity(text.astype(np.int64), frames, mask, 100.0, "official")


def test_error_unknown_mode():
    text, frames, mask = _good()
    with pytest.raises(ValueError, match=r"frame_mask_mode.*'official', 'fixed'.*'legacy'"):
        similarity(text, frames, mask, 100.0, "legacy")


def test_error_all_zero_effective_mask():
    text, frames, mask = _good()
    mask[2] = 0
    with pytest.raises(ValueError, match=r"no frame.*video index 2"):
        similarity(text, frames, mask, 100.0, "fixed")
    # Real frames exist, but only bits 0, 4, 8 are read in official mode.
    mask = prefix_mask([12, 12, 12, 12])
    mask[1] = 0
    mask[1, [1, 2, 3, 5]] = 1
    similarity(text, frames, mask, 100.0, "fixed")           # fine with the intended mask
    with pytest.raises(ValueError, match=r"video index 1.*bits \[0, 4, 8\]"):
        similarity(text, frames, mask, 100.0, "official")


def test_error_bad_scalars_and_out():
    text, frames, mask = _good()
    with pytest.raises(ValueError, match="logit_scale"):
        similarity(text, frames, mask, 0.0, "official")
    with pytest.raises(ValueError, match="text_chunk"):
        similarity(text, frames, mask, 100.0, "official", text_chunk=0)
    with pytest.raises(ValueError, match=r"out.*\[3, 4\].*got \[4, 3\]"):
        similarity(text, frames, mask, 100.0, "official", out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="out.*float32"):
        similarity(text, frames, mask, 100.0, "official", out=np.empty((3, 4), np.float64))


# ------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------

def test_chunked_memory_is_bounded():
    """Peak traced allocation stays far below the unchunked [Nv, T, Nt] float32 intermediate.

    numpy reports its buffers to tracemalloc, so this measures what the function allocates
    (BLAS-internal workspaces are not numpy arrays and are not counted, nor is `out`, which is
    allocated before tracing starts). Nothing is timed.
    """
    nt, nv, d = 2000, 3000, 16
    rng = np.random.default_rng(0)
    text = rng.standard_normal((nt, d)).astype(np.float32)
    frames = rng.standard_normal((nv, T, d)).astype(np.float32)
    mask = prefix_mask(rng.integers(1, T + 1, nv))
    out = np.empty((nt, nv), dtype=np.float32)
    unchunked = nv * T * nt * 4                                # 288 MB

    tracemalloc.start()
    try:
        similarity(text, frames, mask, 100.0, "official", text_chunk=256, video_chunk=64, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = 64 * T * 256 * 4                                   # one scratch block: 786 KB
    print(f"peak traced {peak / 2**20:.2f} MiB vs unchunked intermediate {unchunked / 2**20:.0f} MiB")
    assert peak < unchunked / 50
    assert peak < 8 * block + nt * d * 4 + 2**20
    assert np.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# DSL
# ------------------------------------------------------------------------------------------

def test_dsl_matches_reference_and_is_stable():
    rng = np.random.default_rng(30)
    sim = (rng.standard_normal((17, 9)) * 30).astype(np.float32)
    np.testing.assert_allclose(dsl_rescale(sim), ref_dsl(sim), rtol=1e-5, atol=1e-4)
    big = sim * 1000                                           # exp would overflow unshifted
    got = dsl_rescale(big)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref_dsl(big), rtol=1e-5, atol=1e-2)


def test_dsl_softmax_is_over_texts():
    sim = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], dtype=np.float32)   # 3 texts, 2 videos
    got = dsl_rescale(sim)
    # Column 1 is constant across texts: weights 1/3 each.
    np.testing.assert_allclose(got[:, 1], 5.0 / 3.0, rtol=1e-6)
    w = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(got[:, 0], np.array([1.0, 2.0, 3.0]) * w, rtol=1e-6)


def test_dsl_row_chunks_out_and_dtypes(tmp_path):
    rng = np.random.default_rng(31)
    sim = (rng.standard_normal((50, 7)) * 20).astype(np.float32)
    full = dsl_rescale(sim)
    for rc in (1, 3, 49, 50, 1000):
        np.testing.assert_allclose(dsl_rescale(sim, row_chunk=rc), full, rtol=1e-6, atol=1e-6)
    inplace = sim.copy()
    assert dsl_rescale(inplace, out=inplace, row_chunk=8) is inplace
    np.testing.assert_allclose(inplace, full, rtol=1e-6, atol=1e-6)
    mm = np.memmap(tmp_path / "dsl.f32", dtype=np.float32, mode="w+", shape=sim.shape)
    dsl_rescale(sim, out=mm, row_chunk=16)
    np.testing.assert_allclose(mm, full, rtol=1e-6, atol=1e-6)
    assert dsl_rescale(sim.astype(np.float64)).dtype == np.float64
    h = dsl_rescale(sim.astype(np.float16))
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float32), ref_dsl(sim.astype(np.float16)), rtol=2e-3, atol=2e-2)


def test_dsl_errors():
    with pytest.raises(ValueError, match=r"sim.*\[Nt, Nv\]"):
        dsl_rescale(np.ones(3, np.float32))
    bad = np.ones((3, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"finite.*\(1, 2\)"):
        dsl_rescale(bad)


def _run_fresh(code: str) -> str:
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_runtime_lazy_exports_fresh_interpreter():
    out = _run_fresh(
        "import sys, runtime\n"
        "from runtime import similarity, effective_frame_mask, dsl_rescale\n"
        "m = sys.modules['runtime.frame_similarity']\n"
        "print(similarity is m.similarity, effective_frame_mask is m.effective_frame_mask,"
        " dsl_rescale is m.dsl_rescale)\n"
    )
    assert out == "True True True"


def test_runtime_similarity_attribute_is_the_function_after_submodule_import():
    out = _run_fresh(
        "import runtime\n"
        "from runtime import dsl_rescale\n"
        "from runtime import similarity\n"
        "print(callable(similarity))\n"
    )
    assert out == "True"
