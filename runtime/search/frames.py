"""What a frame-level search index holds: the frames that can carry weight, keyed by content.

The bound behind the threshold search (docs/search.md "The bound"): the TS2-Net score of a text
t and a video v is ``C * sum_f w_f s_f`` with ``s_f`` the cosine of t and frame f, and
``w = softmax(factor * u)`` where every frame outside the *effective* frame mask gets
``u = -1e18``, i.e. a weight of exactly 0 after ``exp``. So the weights are non-negative and sum
to one over the frames the effective mask keeps, and ``sim(t, v) <= C * max_{f kept} s_f``.

"Kept" is the effective mask, not the stored one: in ``official`` mode the kept set is
``frame_mask[(M * f) mod T] == 1``, which can drop a real frame and keep a padding frame (whose
embedding is whatever the video graph returned for an all-zero input frame). The bound holds only
over the kept set, so the frame index holds exactly the kept frames' vectors, normalised the way
:func:`runtime.frame_similarity.similarity` normalises them (a zero vector stays zero: cosine 0).

Ids are derived from content, not row order, so an interrupted or incremental build never
duplicates a video: a video's key is the first 52 bits of its file's SHA-256, a frame's label is
``key << 8 | f``. Files with identical bytes share a key (their embeddings are identical); the
search scores the key once and returns every video that has it, exactly as the full scan would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..frame_similarity import _l2_normalize_last, effective_frame_mask

__all__ = ["KEY_HEX_DIGITS", "FRAME_BITS", "LiveSet", "key_of_sha256", "frame_labels", "weighted_frames",
           "iter_frame_vectors"]

KEY_HEX_DIGITS = 13  # 52 bits: labels (key << 8 | f) stay below 2**60, positive in int64
FRAME_BITS = 8       # up to 256 frames per video


def key_of_sha256(sha256: str) -> int:
    """Stable integer id of a video's content (its file's SHA-256)."""
    return int(sha256[:KEY_HEX_DIGITS], 16)


def frame_labels(key: int, frames: np.ndarray) -> np.ndarray:
    return (np.int64(key) << np.int64(FRAME_BITS)) | frames.astype(np.int64)


def weighted_frames(frame_mask: np.ndarray, mode: str, tokens_per_frame: int) -> np.ndarray:
    """``[N, T]`` bool: the frames that can get a non-zero similarity weight (the effective mask)."""
    return effective_frame_mask(np.asarray(frame_mask), mode, tokens_per_frame).astype(bool)


@dataclass
class LiveSet:
    """The index's videos grouped by content key: what an engine must hold and how to map back."""

    keys: np.ndarray          # [K] int64 content keys, sorted
    rep_row: np.ndarray       # [K] a row of the index arrays with that content
    rows_of: dict             # key -> list of rows (index order) with that content
    row_key: np.ndarray       # [N] key of each row

    @classmethod
    def from_meta(cls, meta: dict) -> "LiveSet":
        from ..index import VideoIndexError

        videos = meta["videos"]
        t = int(meta["bundle"]["max_frames"])
        if t > (1 << FRAME_BITS):
            raise VideoIndexError(f"frame-level engines support at most {1 << FRAME_BITS} frames per video, "
                                  f"the index has {t}")
        row_key = np.fromiter((key_of_sha256(v["sha256"]) for v in videos), np.int64, len(videos))
        sha_of: dict[int, str] = {}
        rows_of: dict[int, list[int]] = {}
        for row, (v, key) in enumerate(zip(videos, row_key.tolist())):
            other = sha_of.setdefault(key, v["sha256"])
            if other != v["sha256"]:
                raise VideoIndexError(f"two different files share the content key {key:x} ({other} and {v['sha256']}): "
                                      "a 52-bit SHA-256 prefix collision; rename nothing, report it")
            rows_of.setdefault(key, []).append(row)
        keys = np.array(sorted(rows_of), np.int64)
        rep = np.array([rows_of[k][0] for k in keys.tolist()], np.int64)
        return cls(keys, rep, rows_of, row_key)

    def digest(self) -> str:
        """Identity of the key set (an engine built for another set is out of date)."""
        import hashlib

        return hashlib.sha256(self.keys.tobytes()).hexdigest()[:16]


def iter_frame_vectors(frame_embeds: np.ndarray, weighted: np.ndarray, rows: np.ndarray, keys: np.ndarray,
                       chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(vectors [n, D] float32 unit or zero, labels [n] int64, keys [n] int64)`` for the
    weighted frames of ``rows`` (one content key each), ``chunk`` videos at a time."""
    for a in range(0, len(rows), chunk):
        r = rows[a:a + chunk]
        order = np.argsort(r, kind="stable")                   # sequential reads of the memmap
        r_sorted, k_sorted = r[order], keys[a:a + chunk][order]
        block = np.array(frame_embeds[r_sorted], dtype=np.float32, copy=True)
        if not np.isfinite(block).all():
            bad = sorted({int(r) for r in r_sorted[~np.isfinite(block).all(axis=(1, 2))]})
            raise ValueError(f"frame embeddings of index rows {bad[:10]} are NaN or infinite: re-encode those videos "
                             "(delete them from the index folder's videos and run `ts2net index` again) before "
                             "building a search engine")
        block = _l2_normalize_last(block)
        keep = weighted[r_sorted]                             # [n, T]
        vid, f = np.nonzero(keep)
        labels = (k_sorted[vid] << np.int64(FRAME_BITS)) | f.astype(np.int64)
        yield np.ascontiguousarray(block[vid, f]), labels, k_sorted[vid]
        del block


class FrameGroups:
    """Frame vectors shared byte for byte by several videos, kept beside the ANN index.

    Why: in ``official`` mask mode the padding slots that get weight all hold the video graph's
    output for an all-zero frame, one identical vector in most short videos (and real collections
    share black or title frames). Thousands of identical points wreck an HNSW graph (its
    neighbours of a point are then all copies of it), so each such vector is stored once here with
    the frame labels that carry it, and the search merges its exact cosines into the engine's list.
    A vector joins when a sync sees it in two videos, or when it equals a vector already here.
    """

    def __init__(self, vectors=None, member_group=None, member_label=None):
        self.vectors = np.zeros((0, 0), np.float32) if vectors is None else np.asarray(vectors, np.float32)
        self.member_group = np.zeros(0, np.int64) if member_group is None else np.asarray(member_group, np.int64)
        self.member_label = np.zeros(0, np.int64) if member_label is None else np.asarray(member_label, np.int64)
        self._by_bytes = {row.tobytes(): g for g, row in enumerate(self.vectors)}

    @classmethod
    def load(cls, path) -> "FrameGroups":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["vectors"], z["member_group"], z["member_label"])

    def arrays(self) -> dict:
        return {"vectors": self.vectors, "member_group": self.member_group, "member_label": self.member_label}

    def __len__(self) -> int:
        return len(self.member_label)

    def absorb(self, vecs: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Take the shared vectors of a batch into the groups; returns the mask of rows left for the ANN."""
        if not len(vecs):
            return np.zeros(0, bool)
        rows = np.ascontiguousarray(vecs).view(np.dtype((np.void, vecs.shape[1] * 4))).ravel()
        uniq, inverse = np.unique(rows, return_inverse=True)
        pairs = np.unique(np.stack([inverse.astype(np.int64), keys]), axis=1)
        videos_per_vector = np.bincount(pairs[0], minlength=len(uniq))
        group_of_uniq = np.full(len(uniq), -1, np.int64)
        for u in range(len(uniq)):
            b = uniq[u].tobytes()
            g = self._by_bytes.get(b)
            if g is None and videos_per_vector[u] >= 2:
                g = len(self._by_bytes)
                self._by_bytes[b] = g
                vec = np.frombuffer(b, np.float32)[None]
                self.vectors = vec.copy() if self.vectors.size == 0 else np.concatenate([self.vectors, vec])
            if g is not None:
                group_of_uniq[u] = g
        g_rows = group_of_uniq[inverse]
        take = g_rows >= 0
        if take.any():
            self.member_group = np.concatenate([self.member_group, g_rows[take]])
            self.member_label = np.concatenate([self.member_label, labels[take]])
        return ~take

    def remove_keys(self, keys: np.ndarray) -> None:
        keep = ~np.isin(self.member_label >> np.int64(FRAME_BITS), keys)
        self.member_group, self.member_label = self.member_group[keep], self.member_label[keep]

    def side_lists(self, unit_queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines ``[B, M]`` of every grouped frame for each query, and the frames' labels ``[M]``."""
        if not len(self.member_label):
            return np.zeros((len(unit_queries), 0), np.float32), self.member_label
        cos = unit_queries @ self.vectors.T                 # [B, G]
        return cos[:, self.member_group], self.member_label
