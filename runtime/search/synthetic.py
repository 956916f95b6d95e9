"""Seeded synthetic collections for the search benchmark and tests (docs/search.md "Benchmark data").

Structure, so that ANN behaves as on real embeddings rather than on isotropic noise:

* ``n_clusters`` topic centroids ``c_j`` (unit, random in D dims); each video's centre is
  ``normalise(c_j + spread * g)`` (videos of one topic are near each other: cosine ~0.6);
* a video's frames drift along an AR(1) path: ``z_0 = g_0``, ``z_f = rho z_{f-1} + sqrt(1-rho^2) g_f``,
  frame ``f = normalise(centre + frame_noise * z_f)`` (consecutive frames correlated by ``rho``);
* ``short_fraction`` of videos are shorter than T (uniform 2..T-1 real frames); their padding
  slots hold one fixed vector, as the video graph returns one fixed embedding for an all-zero
  frame (in ``official`` mask mode some of those padding slots get weight);
* a query is ``normalise(centre_v + query_noise * g)`` for a random video v: text-frame cosines
  around 0.3, like CLIP's.

``g`` are independent N(0, I/D) draws (norm ~1). Everything comes from ``numpy.random.default_rng(seed)``.
Frames are generated in blocks and written straight into a memory-mapped ``.npy`` (float16), so a
million videos need no more RAM than one block.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes

__all__ = ["SyntheticSpec", "write_synthetic_index", "synthetic_queries", "write_index_dir"]


@dataclass(frozen=True)
class SyntheticSpec:
    n_videos: int
    frames: int = 12
    dim: int = 512
    n_clusters: int = 0            # 0: n_videos // 100 (at least 8)
    spread: float = 0.8
    frame_noise: float = 0.7
    rho: float = 0.8
    short_fraction: float = 0.3
    query_noise: float = 2.5
    seed: int = 0
    similarity: tuple = (("logit_scale", 100.0), ("frame_mask_mode", "official"), ("tokens_per_frame", 4),
                         ("softmax_factor", 4.0))

    @property
    def clusters(self) -> int:
        return self.n_clusters or max(8, self.n_videos // 100)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gauss(rng, shape, dim) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(dim))


def _centroids(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster of each video, video centres [N, D], padding vector [D]) from the spec's seed."""
    rng = np.random.default_rng([spec.seed, 1])
    c = _unit(_gauss(rng, (spec.clusters, spec.dim), spec.dim))
    cluster = rng.integers(0, spec.clusters, spec.n_videos)
    centres = np.empty((spec.n_videos, spec.dim), np.float32)
    for a in range(0, spec.n_videos, 65536):
        b = min(a + 65536, spec.n_videos)
        centres[a:b] = _unit(c[cluster[a:b]] + spec.spread * _gauss(rng, (b - a, spec.dim), spec.dim))
    pad = _unit(_gauss(rng, (spec.dim,), spec.dim))
    return cluster, centres, pad


def write_index_dir(out: Path, frame_embeds_file: str, frame_mask_file: str, n: int, frames: int, dim: int,
                    similarity: dict, sha256s: list[str], ids: list[str], *, source: str) -> dict:
    """An index directory around existing arrays (what `ts2net index` writes, minus the encoding)."""
    from ..index import INDEX_FILE, INDEX_FORMAT, INDEX_VERSION

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mask = np.load(Path(out) / frame_mask_file, mmap_mode="r")
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "created": now, "updated": now,
            "bundle": {"path": None, "id": f"synthetic-{source}", "model": "synthetic", "max_frames": frames,
                       "max_words": None, "embed_dim": dim},
            "backend": "synthetic", "precision": "fp32", "dtype": str(np.load(Path(out) / frame_embeds_file,
                                                                              mmap_mode="r").dtype),
            "similarity": dict(similarity), "videos_dir": str(Path(out).resolve() / "videos"), "n_videos": n,
            "videos": [{"id": i, "file": f"{i}.mp4", "sha256": s, "frames": int(m.sum())}
                       for i, s, m in zip(ids, sha256s, mask)],
            "skipped": [], "arrays": {"frame_embeds": frame_embeds_file, "frame_mask": frame_mask_file},
            "engine": {"name": "scan"}, "build": {"synthetic": source}}
    atomic_write_bytes(Path(out) / INDEX_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def fake_sha256(seed: int, i: int) -> str:
    return hashlib.sha256(f"synthetic-{seed}-{i}".encode()).hexdigest()


def write_synthetic_index(out, spec: SyntheticSpec, *, progress: bool = False) -> dict:
    """Generate ``spec``'s collection into the index directory ``out`` (float16 frames)."""
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, t, d = spec.n_videos, spec.frames, spec.dim
    _, centres, pad = _centroids(spec)
    fe = open_memmap(out / "frame_embeds.synthetic.npy", mode="w+", dtype=np.float16, shape=(n, t, d))
    fm = open_memmap(out / "frame_mask.synthetic.npy", mode="w+", dtype=np.uint8, shape=(n, t))
    rng = np.random.default_rng([spec.seed, 2])
    block = 8192
    for a in tqdm(range(0, n, block), desc="synthetic videos", disable=not progress, leave=False):
        b = min(a + block, n)
        z = _gauss(rng, (b - a, d), d)
        frames = np.empty((b - a, t, d), np.float32)
        for f in range(t):
            if f:
                z = spec.rho * z + np.float32(np.sqrt(1 - spec.rho ** 2)) * _gauss(rng, (b - a, d), d)
            frames[:, f] = _unit(centres[a:b] + spec.frame_noise * z)
        short = rng.random(b - a) < spec.short_fraction
        length = np.where(short, rng.integers(2, max(t, 3), b - a), t)
        mask = np.arange(t)[None, :] < length[:, None]
        frames[~mask] = pad
        fe[a:b] = frames.astype(np.float16)
        fm[a:b] = mask
    fe.flush()
    fm.flush()
    del fe, fm
    ids = [f"v{i:07d}" for i in range(n)]
    return write_index_dir(out, "frame_embeds.synthetic.npy", "frame_mask.synthetic.npy", n, t, d,
                           dict(spec.similarity), [fake_sha256(spec.seed, i) for i in range(n)], ids,
                           source=json.dumps(asdict(spec)))


def synthetic_queries(spec: SyntheticSpec, n_queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(text embeddings [Q, D] float32, the video each was drawn from [Q])."""
    _, centres, _ = _centroids(spec)
    rng = np.random.default_rng([spec.seed, 3, seed])
    target = rng.integers(0, spec.n_videos, n_queries)
    text = _unit(centres[target] + spec.query_noise * _gauss(rng, (n_queries, spec.dim), spec.dim))
    return text.astype(np.float32), target
