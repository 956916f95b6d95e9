"""TS2-Net text-video similarity in plain numpy (no torch).

This reproduces the similarity head that the official TS2-Net code uses at retrieval time, so a
bundle served without torch ranks videos exactly like the PyTorch model did:

1. text and frame embeddings are L2-normalised;
2. ``s[v, f, t]`` is the cosine similarity of text ``t`` with frame ``f`` of video ``v``;
3. the frames are weighted by a softmax over ``softmax_factor * u`` where ``u`` is ``s`` masked
   by the (effective) frame mask and L2-normalised over the frames of each video-text pair, with
   masked frames set to ``-1e18`` so they get zero weight;
4. ``sim[t, v] = logit_scale * sum_f w[v, f, t] * s[v, f, t]``.

Everything is computed in float32, like the reference, whatever the input float dtype.

The full ``[Nv, T, Nt]`` tensor of step 2 is never materialised: :func:`similarity` walks over
blocks of ``video_chunk`` videos x ``text_chunk`` texts, so 10,000 texts against 100,000 videos
(T=12) needs a few tens of MiB of scratch instead of ~48 GB. The ``[Nt, Nv]`` result itself
(4 GB at that size) can be written into a caller-supplied array such as an ``np.memmap``.

:func:`frame_scores` returns the per-frame terms of step 3 and 4 (``s`` and the weights) for a
few videos, from the same blocks :func:`similarity` walks (``_blocks``, the one implementation),
so ``ts2net explain`` shows exactly the numbers a search or an evaluation ranked by.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .bundle_format import FRAME_MASK_MODES, MASKED_FRAME_VALUE

__all__ = [
    "FRAME_MASK_MODES",
    "DEFAULT_TEXT_CHUNK",
    "DEFAULT_VIDEO_CHUNK",
    "MASK_FILL_VALUE",
    "effective_frame_mask",
    "similarity",
    "FrameScores",
    "frame_scores",
    "dsl_rescale",
    "NonFiniteScoresError",
    "require_finite_scores",
]


#: Default block sizes of :func:`similarity`. One float32 scratch block is
#: ``video_chunk * T * text_chunk * 4`` bytes = 12 MiB for T=12, and the loop keeps about two of
#: them alive at once. Blocks of this size are large enough that the per-block Python overhead
#: and BLAS call overhead are negligible, and small enough to stay near the CPU caches.
DEFAULT_TEXT_CHUNK = 1024
DEFAULT_VIDEO_CHUNK = 256

#: Value written into masked frames before the softmax, owned by the bundle format (the manifest
#: records it as similarity.masked_frame_value).
MASK_FILL_VALUE = MASKED_FRAME_VALUE


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _check_float_array(name: str, arr, ndim: int, expected: str) -> np.ndarray:
    """Return ``arr`` as an ndarray (no copy, memmaps stay memmaps) after checking rank and dtype.

    Embeddings must be real floating point: an integer array here almost always means token ids
    or a mask were passed by mistake, which would otherwise produce plausible-looking garbage.
    """
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    if arr.ndim != ndim:
        raise ValueError(
            f"{name} must have shape {expected} ({ndim}-D), got shape {_shape_str(arr.shape)}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float16/float32/float64), got dtype {arr.dtype}"
        )
    return arr


def _check_mask(frame_mask, name: str = "frame_mask") -> np.ndarray:
    """Check that a mask holds only 0/1 (bool, int or float) and return it as an ndarray."""
    mask = np.asarray(frame_mask)
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise TypeError(f"{name} must be an int, bool or float array of 0/1, got dtype {mask.dtype}")
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must contain only 0 (padding) and 1 (real frame); found {mask[where]!r} at "
            f"index {where}"
        )
    return mask


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_mode(frame_mask_mode) -> str:
    if frame_mask_mode not in FRAME_MASK_MODES:
        valid = ", ".join(repr(m) for m in FRAME_MASK_MODES)
        raise ValueError(f"frame_mask_mode must be one of {valid}; got {frame_mask_mode!r}")
    return frame_mask_mode


# --------------------------------------------------------------------------------------------
# effective frame mask
# --------------------------------------------------------------------------------------------

def effective_frame_mask(frame_mask, mode: str, tokens_per_frame: int = 4) -> np.ndarray:
    """The frame mask that the TS2-Net similarity head actually applies.

    Args:
        frame_mask: ``[Nv, T]`` (or ``[T]`` for one video) array of 0/1; 1 marks a real frame and
            0 a padding frame. bool, int and float masks are accepted.
        mode: ``"fixed"`` returns the mask unchanged. ``"official"`` reproduces the released code:
            ``m[:, f] = frame_mask[:, (tokens_per_frame * f) % T]``.
        tokens_per_frame: tokens kept per frame by the token-selection module, ``M = top_k + 1``
            (the frame's CLS token plus the ``top_k`` selected patch tokens). 4 for the released
            models.

    Returns:
        An array with the shape and dtype of ``frame_mask``.

    Why "official" exists: after token selection the visual sequence has ``T * M`` tokens laid
    out frame by frame (frame ``f`` owns tokens ``f*M .. f*M + M - 1``). The official code builds
    the matching token mask by *tiling* the T-long frame mask M times (token ``j`` gets bit
    ``j % T``) instead of repeating each frame's bit M times, and later keeps every M-th token,
    i.e. token ``f*M``, to get back one entry per frame. So frame ``f`` is judged by bit
    ``(M*f) % T`` of the original mask. For full videos this is harmless; for short, padded
    videos it lets some padding frames in and drops some real ones. The trained checkpoints were
    evaluated with this behaviour, so reproducing their published numbers needs it; "fixed" is
    the intended behaviour.

    Examples with T=12, M=4 (only bits 0, 4 and 8 of the input are ever read):
    12 or 11 valid frames -> all 12 frames count; frames 0..4 valid -> frames
    0, 1, 3, 4, 6, 7, 9, 10 count; 1 valid frame -> frames 0, 3, 6, 9 count.
    """
    mode = _check_mode(mode)
    mask = _check_mask(frame_mask)
    if mask.ndim not in (1, 2):
        raise ValueError(
            f"frame_mask must have shape [Nv, T] (or [T] for one video), got shape "
            f"{_shape_str(mask.shape)}"
        )
    if mode == "fixed":
        return mask.copy()
    m = _check_positive_int("tokens_per_frame", tokens_per_frame)
    t = mask.shape[-1]
    if t == 0:
        return mask.copy()
    source = (m * np.arange(t)) % t
    return mask[..., source]


# --------------------------------------------------------------------------------------------
# similarity
# --------------------------------------------------------------------------------------------

def _l2_normalize_last(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis in place (``x`` must be a float32 array we own).

    A zero vector stays zero instead of becoming NaN. The reference would produce NaN there and
    poison every score it touches; zero vectors typically come from zero-filled padding frames,
    which must not make the scores of the *real* frames of that video NaN.
    """
    norms = np.sqrt(np.einsum("...d,...d->...", x, x))
    norms[norms == 0] = 1.0
    x /= norms[..., None]
    return x


@dataclass(frozen=True)
class _Inputs:
    """Checked inputs of the similarity: what every block of :func:`_blocks` reads."""

    text: np.ndarray        # [Nt, D], any float dtype (normalised per block in float32)
    frames: np.ndarray      # [Nv, T, D], any float dtype, possibly an np.memmap
    eff: np.ndarray         # [Nv, T] bool, the effective frame mask
    scale: float
    factor: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Nt, Nv, T, D)."""
        nv, t, d = self.frames.shape
        return self.text.shape[0], nv, t, d


def _validated_inputs(text_embeds, frame_embeds, frame_mask, logit_scale, frame_mask_mode, tokens_per_frame,
                      softmax_factor) -> _Inputs:
    """Every input check shared by :func:`similarity` and :func:`frame_scores`, before any work.

    Each error names the argument and the expected vs received shape or dtype; a video left without a
    frame by its effective mask is refused here, so a big matrix never fails half way.
    """
    frame_mask_mode = _check_mode(frame_mask_mode)
    text = _check_float_array("text_embeds", text_embeds, 2, "[Nt, D]")
    frames = _check_float_array("frame_embeds", frame_embeds, 3, "[Nv, T, D]")
    nt, d = text.shape
    nv, t, d_frames = frames.shape
    if d_frames != d:
        raise ValueError(
            f"frame_embeds must have shape [Nv, T, D] with D={d} to match text_embeds "
            f"{_shape_str(text.shape)}; expected {_shape_str((nv, t, d))}, got "
            f"{_shape_str(frames.shape)}"
        )
    if d == 0:
        raise ValueError("embedding dimension D must be > 0, got text_embeds shape "
                         f"{_shape_str(text.shape)}")
    if t == 0:
        raise ValueError(f"frame_embeds must have at least one frame, got shape "
                         f"{_shape_str(frames.shape)}")
    mask = _check_mask(frame_mask)
    if mask.shape != (nv, t):
        raise ValueError(
            f"frame_mask must have shape [Nv, T] = {_shape_str((nv, t))} to match frame_embeds "
            f"{_shape_str(frames.shape)}, got {_shape_str(mask.shape)}"
        )
    tokens_per_frame = _check_positive_int("tokens_per_frame", tokens_per_frame)
    try:
        scale = float(logit_scale)
        factor = float(softmax_factor)
    except (TypeError, ValueError):
        raise TypeError(
            f"logit_scale and softmax_factor must be real scalars, got {logit_scale!r} and "
            f"{softmax_factor!r}"
        ) from None
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"logit_scale must be a finite positive number (exp of the model's logit_scale "
            f"parameter, e.g. 100.0), got {logit_scale!r}"
        )
    if not np.isfinite(factor):
        raise ValueError(f"softmax_factor must be finite, got {softmax_factor!r}")

    # Effective mask for all videos up front: tiny ([Nv, T] bools) and lets us fail before
    # spending minutes on a big matrix.
    eff = effective_frame_mask(mask, frame_mask_mode, tokens_per_frame).astype(bool)
    empty = np.flatnonzero(~eff.any(axis=1))
    if empty.size:
        shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if empty.size > 10 else "")
        hint = ""
        if frame_mask_mode == "official":
            hint = (
                f" (in 'official' mode only frame_mask bits "
                f"{sorted(set(((tokens_per_frame * np.arange(t)) % t).tolist()))} are read)"
            )
        raise ValueError(
            f"frame_mask leaves no frame for {empty.size} video(s) under the effective "
            f"{frame_mask_mode!r} mask: video index {shown}{hint}"
        )

    return _Inputs(text, frames, eff, scale, factor)


@dataclass
class _Block:
    """One block of videos ``v0:v1`` x texts ``t0:t1``: the per-frame terms and the scores."""

    v0: int
    v1: int
    t0: int
    t1: int
    cosines: np.ndarray     # s [vc, T, tc]
    exp_weights: np.ndarray  # softmax numerators [vc, T, tc] (max-shifted exp; 0 on masked frames)
    weight_sums: np.ndarray  # softmax denominators [vc, tc]
    scores: np.ndarray      # [vc, tc] logit-scaled similarity


def _blocks(inputs: _Inputs, text_chunk: int, video_chunk: int,
            video_starts: Optional[Sequence[int]] = None) -> Iterator[_Block]:
    """The one implementation of the TS2-Net score, block by block (module docstring, steps 1-4).

    :func:`similarity` keeps only the scores of each block; :func:`frame_scores` also keeps the
    per-frame cosines and weights, so an explanation shows exactly the numbers a search ranked by.
    ``video_starts`` limits the walk to the video blocks starting there (multiples of
    ``video_chunk``); every block is computed exactly as in the full walk.
    """
    text_chunk = _check_positive_int("text_chunk", text_chunk)
    video_chunk = _check_positive_int("video_chunk", video_chunk)
    nt, nv, t, d = inputs.shape
    if nt == 0 or nv == 0:
        return
    # Texts are normalised once (Nt x D float32 is small); frames once per video block.
    text32 = _l2_normalize_last(np.array(inputs.text, dtype=np.float32, copy=True))
    scale32 = np.float32(inputs.scale)
    factor32 = np.float32(inputs.factor)

    for v0 in (range(0, nv, video_chunk) if video_starts is None else video_starts):
        v1 = min(v0 + video_chunk, nv)
        vc = v1 - v0
        fr = _l2_normalize_last(np.array(inputs.frames[v0:v1], dtype=np.float32, copy=True))
        fr2d = fr.reshape(vc * t, d)
        m3 = inputs.eff[v0:v1, :, None]               # [vc, T, 1]
        masked_out = ~m3
        any_masked = bool(masked_out.any())
        for t0 in range(0, nt, text_chunk):
            t1 = min(t0 + text_chunk, nt)
            tc = t1 - t0
            # s[v, f, t]: cosine similarity of every frame with every text of the block.
            s = np.matmul(fr2d, text32[t0:t1].T).reshape(vc, t, tc)
            # u = s * m, L2-normalised over the frames of each (video, text) pair.
            u = s * m3 if any_masked else s.copy()
            norm = np.sqrt(np.einsum("vft,vft->vt", u, u))[:, None, :]
            norm[norm == 0] = 1.0
            u *= factor32 / norm                      # softmax_factor * u / ||u||
            if any_masked:
                np.copyto(u, np.float32(MASK_FILL_VALUE), where=masked_out)
            # Softmax over frames (axis 1), max-shifted for stability, then the weighted mean.
            u -= u.max(axis=1, keepdims=True)
            np.exp(u, out=u)
            den = u.sum(axis=1)
            block = np.einsum("vft,vft->vt", u, s)
            block /= den
            block *= scale32
            yield _Block(v0, v1, t0, t1, s, u, den, block)


def similarity(
    text_embeds,
    frame_embeds,
    frame_mask,
    logit_scale: float,
    frame_mask_mode: str,
    *,
    tokens_per_frame: int = 4,
    softmax_factor: float = 4.0,
    text_chunk: int = DEFAULT_TEXT_CHUNK,
    video_chunk: int = DEFAULT_VIDEO_CHUNK,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """TS2-Net text-to-video similarity matrix ``[Nt, Nv]`` (float32).

    Args:
        text_embeds: ``[Nt, D]`` sentence embeddings, not necessarily normalised.
        frame_embeds: ``[Nv, T, D]`` per-frame embeddings, not necessarily normalised. May be an
            ``np.memmap``: only ``video_chunk`` videos are read and converted at a time.
        frame_mask: ``[Nv, T]`` 0/1 mask, 1 = real frame, 0 = padding.
        logit_scale: the multiplier applied to the scores, i.e. the *already exponentiated*
            CLIP temperature ``exp(model.logit_scale)`` (100.0 for the released checkpoints), not
            the raw ``logit_scale`` parameter (~4.6052). It only scales the scores, so it does
            not change rankings, but it does change DSL (:func:`dsl_rescale`) results.
        frame_mask_mode: ``"official"`` or ``"fixed"``; see :func:`effective_frame_mask`.
        tokens_per_frame: ``top_k + 1`` of the visual token selection (4 for released models);
            only used by ``"official"`` masking.
        softmax_factor: multiplier inside the frame-weight softmax (4.0 in the official code).
        text_chunk, video_chunk: block sizes. Scratch memory is about
            ``2 * video_chunk * T * text_chunk * 4`` bytes (24 MiB with the defaults and T=12)
            plus one float32 block of frames and a float32 copy of the normalised texts
            (``Nt * D * 4`` bytes, 20 MB for 10k x 512), independent of Nv (~43 MiB peak
            measured for 4096 texts, D=512, defaults). Scores depend on the block sizes only
            through the summation order BLAS picks for each block shape: a few float32 ulps
            (~1e-7 relative), never more.
        out: optional ``[Nt, Nv]`` float32 array to write into, e.g. an ``np.memmap`` when the
            result is too big for RAM (10k texts x 100k videos is 4 GB). It is filled block by
            block and returned.

    Returns:
        ``out`` if given, otherwise a new ``[Nt, Nv]`` float32 array.

    Raises:
        ValueError / TypeError naming the argument and the expected vs received shape or dtype;
        ValueError if a video has no frame left under its effective mask (the softmax over
        frames would be undefined: the reference silently averages all frames instead).

    Degenerate inputs are kept finite on purpose: a zero-norm frame or text embedding counts as
    a zero vector, and if every masked-in similarity of a pair is exactly 0 the frames get equal
    weights (the reference would return NaN in both cases).
    """
    inputs = _validated_inputs(text_embeds, frame_embeds, frame_mask, logit_scale, frame_mask_mode,
                           tokens_per_frame, softmax_factor)
    nt, nv, _, _ = inputs.shape
    if out is None:
        out = np.empty((nt, nv), dtype=np.float32)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array (or np.memmap), got {type(out).__name__}")
        if out.shape != (nt, nv):
            raise ValueError(
                f"out must have shape [Nt, Nv] = {_shape_str((nt, nv))}, got "
                f"{_shape_str(out.shape)}"
            )
        if out.dtype != np.float32:
            raise TypeError(f"out must have dtype float32, got {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
    for block in _blocks(inputs, text_chunk, video_chunk):
        out[block.t0:block.t1, block.v0:block.v1] = block.scores.T
    return out


@dataclass(frozen=True)
class FrameScores:
    """The terms of the similarity for every (video, frame, text), as :func:`similarity` computes them.

    ``cosines[v, f, t]`` is s_f, ``weights[v, f, t]`` is w_f (non-negative, summing to 1 over the
    frames of ``effective_mask[v]``, exactly 0 elsewhere), ``scores[t, v]`` equals
    ``similarity(...)[t, v]`` bit for bit (the same blocks of the same code), and
    ``effective_mask[v, f]`` says which frames can get weight at all. ``videos[v]`` is the row
    of ``frame_embeds`` that entry ``v`` describes.
    """

    videos: np.ndarray          # int64 [Nv']
    cosines: np.ndarray         # float32 [Nv', T, Nt]
    weights: np.ndarray         # float32 [Nv', T, Nt]
    scores: np.ndarray          # float32 [Nt, Nv']
    effective_mask: np.ndarray  # bool [Nv', T]


def frame_scores(
    text_embeds,
    frame_embeds,
    frame_mask,
    logit_scale: float,
    frame_mask_mode: str,
    *,
    tokens_per_frame: int = 4,
    softmax_factor: float = 4.0,
    text_chunk: int = DEFAULT_TEXT_CHUNK,
    video_chunk: int = DEFAULT_VIDEO_CHUNK,
    videos: Optional[Sequence[int]] = None,
) -> FrameScores:
    """The per-frame cosines and softmax weights behind :func:`similarity`, with its scores.

    Same arguments, checks and errors as :func:`similarity`, plus ``videos``: the rows of
    ``frame_embeds`` to describe (default all). Only the video blocks holding those rows are
    computed, each exactly as :func:`similarity` computes it, so with the same texts and chunk
    sizes the scores are bit-identical to the matching entries of a full :func:`similarity`
    call (block shapes change BLAS's summation order, hence the last float32 bits). This is
    what lets an explanation reproduce a search's score over a large index at the cost of one
    block. The result holds ``2 * Nv' * T * Nt`` floats: meant for a few videos.
    """
    inputs = _validated_inputs(text_embeds, frame_embeds, frame_mask, logit_scale, frame_mask_mode,
                           tokens_per_frame, softmax_factor)
    video_chunk = _check_positive_int("video_chunk", video_chunk)
    nt, nv, t, _ = inputs.shape
    rows = np.arange(nv) if videos is None else np.asarray(videos, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= nv):
        raise ValueError(f"videos must be row numbers of frame_embeds in [0, {nv}), got {rows.tolist()}")
    starts = sorted({int(r) // video_chunk * video_chunk for r in rows})
    slots: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        slots.setdefault(int(r), []).append(i)
    cosines = np.zeros((rows.size, t, nt), np.float32)
    weights = np.zeros((rows.size, t, nt), np.float32)
    scores = np.zeros((nt, rows.size), np.float32)
    for block in _blocks(inputs, text_chunk, video_chunk, starts):
        for v in range(block.v0, block.v1):
            b = v - block.v0
            for i in slots.get(v, ()):
                cosines[i, :, block.t0:block.t1] = block.cosines[b]
                weights[i, :, block.t0:block.t1] = block.exp_weights[b] / block.weight_sums[b][None, :]
                scores[block.t0:block.t1, i] = block.scores[b]
    return FrameScores(rows, cosines, weights, scores, inputs.eff[rows].copy())


# --------------------------------------------------------------------------------------------
# DSL
# --------------------------------------------------------------------------------------------

def dsl_rescale(sim, *, out: Optional[np.ndarray] = None, row_chunk: int = 4096) -> np.ndarray:
    """Dual-softmax (DSL) rescoring used by TS2-Net at evaluation time.

    ``dsl = sim * softmax(sim, axis=0)``: for every video column the text scores are turned
    into a distribution over texts, which penalises videos that match *every* text well (hubs).
    With ``sim`` laid out ``[Nt, Nv]`` as returned by :func:`similarity`, axis 0 is the text axis.

    The softmax is max-shifted per column, so large ``logit_scale``-scaled scores do not
    overflow. Rows are processed ``row_chunk`` at a time with an online (running max / rescaled
    running sum) column softmax, so an ``np.memmap`` input of several GB only needs
    ``row_chunk * Nv`` scratch; pass ``out`` (it may be ``sim`` itself, for in-place) to avoid
    allocating the result (``out`` may have any float dtype). A new result has ``sim``'s dtype;
    float16 input is computed in float32 and rounded back. ``sim`` must be floating point and
    finite: a NaN or infinite score makes its whole column's softmax meaningless, so it is
    reported instead of propagated.
    """
    s = _check_float_array("sim", sim, 2, "[Nt, Nv]")
    row_chunk = _check_positive_int("row_chunk", row_chunk)
    n_rows, n_cols = s.shape
    work = np.float64 if s.dtype == np.float64 else np.float32
    if out is None:
        out = np.empty(s.shape, dtype=np.float16 if s.dtype == np.float16 else work)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array (or np.memmap), got {type(out).__name__}")
        if out.shape != s.shape:
            raise ValueError(f"out must have shape {_shape_str(s.shape)}, got {_shape_str(out.shape)}")
        if not np.issubdtype(out.dtype, np.floating):
            raise TypeError(f"out must be a floating-point array, got dtype {out.dtype}")
    if n_rows == 0 or n_cols == 0:
        return out

    col_max = np.full(n_cols, -np.inf, dtype=np.float64)
    col_sum = np.zeros(n_cols, dtype=np.float64)
    for r0 in range(0, n_rows, row_chunk):
        block = np.asarray(s[r0:r0 + row_chunk], dtype=work)
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(
                f"sim must be finite; found {block[tuple(bad)]} at index "
                f"({int(bad[0]) + r0}, {int(bad[1])})"
            )
        new_max = np.maximum(col_max, block.max(axis=0))
        col_sum *= np.exp(col_max - new_max)          # exp(-inf) = 0 on the first block
        col_sum += np.exp(block - new_max.astype(work)).sum(axis=0, dtype=np.float64)
        col_max = new_max
    col_max_w = col_max.astype(work)
    inv_sum = (1.0 / col_sum).astype(work)
    for r0 in range(0, n_rows, row_chunk):
        block = np.array(s[r0:r0 + row_chunk], dtype=work, copy=True)
        weights = np.exp(block - col_max_w)
        weights *= inv_sum
        block *= weights
        out[r0:r0 + row_chunk] = block
    return out


class NonFiniteScoresError(ValueError):
    """Similarity scores that are NaN or infinite: ranking them would be arbitrary."""


def _non_finite_rows(arr: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Indices of the leading-axis rows of `arr` holding a NaN or an infinity (memory-mapped safe)."""
    rows = []
    for start in range(0, len(arr), chunk):
        block = np.asarray(arr[start:start + chunk], np.float32).reshape(min(chunk, len(arr) - start), -1)
        rows.extend((start + np.flatnonzero(~np.isfinite(block).all(axis=1))).tolist())
    return np.asarray(rows, np.int64)


def require_finite_scores(sim: np.ndarray, text_embeds, frame_embeds, *, text_labels, video_labels,
                          text_source: str, video_source: str) -> None:
    """Raise NonFiniteScoresError naming where NaN/inf scores came from; return if all are finite.

    Every comparison with NaN is false, so a NaN score would neither win nor lose a ranking; its
    position in a sorted list is arbitrary. Search and evaluation therefore refuse such scores and
    say whether the text embeddings (the text graph) or the frame embeddings (index / video graph)
    carried them.
    """
    if np.isfinite(sim).all():
        return
    bad_texts = _non_finite_rows(np.asarray(text_embeds))
    bad_videos = _non_finite_rows(frame_embeds)
    n_bad = int((~np.isfinite(sim)).sum())
    parts = [f"{n_bad} of {sim.size} similarity scores are NaN or infinite"]

    def names(labels, idx):
        shown = [repr(str(labels[i])[:60]) for i in idx[:5]]
        return ", ".join(shown) + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")

    if len(bad_texts):
        parts.append(f"the text embeddings of {names(text_labels, bad_texts)} are non-finite ({text_source})")
    if len(bad_videos):
        parts.append(f"the frame embeddings of {names(video_labels, bad_videos)} are non-finite ({video_source})")
    if not len(bad_texts) and not len(bad_videos):
        parts.append("the embeddings are finite but overflow the similarity (check the bundle's logit_scale)")
    raise NonFiniteScoresError("; ".join(parts) + ". The model or its inputs are corrupt: re-export the bundle "
                               "from a checkpoint with finite weights, or rebuild the index")
