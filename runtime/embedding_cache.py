"""On-disk cache of text and video embeddings, so re-running eval or index is fast.

Why a content-addressed cache: decoding and encoding a video costs ~100x more than hashing it,
and embeddings depend only on (model, backend, precision, file bytes). So:

* one cache directory per ``{bundle_id}-{backend}-{precision}`` (an FP16 engine's embeddings
  differ slightly from the FP32 graph's, and a new bundle makes every entry stale at once);
* one ``.npz`` per video, named by the SHA-256 of the video *file*: a changed file gets a new
  name and is re-encoded, a renamed or copied one is found again, and nothing needs an index
  file that could disagree with the entries;
* video entries under ``videos/{preprocessing id}/``: the id digests our decode + transform rules'
  version and the PyAV / FFmpeg / Pillow versions (``runtime.video.preprocessing_identity``), so
  entries filled by other pixel-producing code are never served; they are simply not found;
* captions keyed by the SHA-256 of their UTF-8 text, stored in chunk files of many captions
  (one file per caption would be thousands of tiny files for MSR-VTT).

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a crash leaves either the old entry, the new one, or nothing: never half a
file under a final name. Encoding writes its results every ``chunk_size`` videos, so an
interrupted run loses at most one chunk and the next run only encodes what is missing. Per-video
entries are not fsync'ed (that would cost a disk flush per video); an entry that a power loss
left unreadable is treated as a miss and encoded again.

Files are always hashed (no mtime shortcut): hashing the 1k-A test videos takes seconds, and a
stale shortcut would silently serve embeddings of the old file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .video import VideoDecodeError, preprocessing_id, preprocessing_identity
from .files import atomic_save_npy, atomic_write_bytes, npz_bytes
from .files import sha256_file as file_sha256

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "default_cache_dir",
    "file_sha256",
    "text_sha256",
    "atomic_write_bytes",
    "atomic_save_npy",
    "VideoEmbedding",
    "EmbeddingCache",
    "EncodedVideos",
    "encode_videos_cached",
    "encode_texts_cached",
]

#: Environment variable overriding the default cache root.
CACHE_ENV = "TS2NET_CACHE_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def default_cache_dir() -> Path:
    """``$TS2NET_CACHE_DIR``, else ``$XDG_CACHE_HOME/ts2net-deploy/embeddings`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ts2net-deploy" / "embeddings"




def text_sha256(text: str) -> str:
    """Cache key of a caption: the SHA-256 of its exact UTF-8 bytes (cleanup is the model's job)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------






# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------

@dataclass
class VideoEmbedding:
    """What the video graph returns for one video (frame_embeds ``[T, D]``, mask ``[T]``)."""

    frame_embeds: np.ndarray
    frame_mask: np.ndarray
    patch_indices: Optional[np.ndarray] = None


class EmbeddingCache:
    """Embeddings of one (bundle, backend, precision) under ``{root}/{bundle}-{backend}-{precision}/``.

    Layout: ``videos/{preprocessing_id}/{sha[:2]}/{sha}.npz`` (``frame_embeds``, ``frame_mask``, optional
    ``patch_indices``), ``texts/{chunk}.npz`` (``keys`` = caption SHA-256s, ``embeds``) and a
    human-readable ``cache.json``.
    """

    def __init__(self, root: str | os.PathLike, bundle_id: str, backend: str, precision: str):
        parts = [_SAFE.sub("_", str(x)) for x in (bundle_id, backend, precision)]
        self.root = Path(root)
        self.dir = self.root / "-".join(parts)
        self.key = {"bundle_id": str(bundle_id), "backend": str(backend), "precision": str(precision)}
        self.preprocessing_id = preprocessing_id()
        self.preprocessing = preprocessing_identity()
        self._texts: Optional[dict[str, np.ndarray]] = None

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.dir)!r})"

    def _describe(self) -> None:
        meta = self.dir / "cache.json"
        if not meta.exists():
            atomic_write_bytes(meta, (json.dumps({"format": "ts2net-embedding-cache", "version": 2,
                                                  **self.key}, indent=1) + "\n").encode(), fsync=False)
        pp_meta = self.dir / "videos" / self.preprocessing_id / "preprocessing.json"
        if not pp_meta.exists():
            atomic_write_bytes(pp_meta, (json.dumps(self.preprocessing, indent=1) + "\n").encode(), fsync=False)

    # videos ---------------------------------------------------------------------------------
    def video_file(self, sha: str) -> Path:
        return self.dir / "videos" / self.preprocessing_id / sha[:2] / f"{sha}.npz"

    def load_video(self, sha: str) -> Optional[VideoEmbedding]:
        """The cached embedding of the video file with this SHA-256, or None (also if unreadable)."""
        path = self.video_file(sha)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                emb = VideoEmbedding(np.array(data["frame_embeds"]), np.array(data["frame_mask"]),
                                     np.array(data["patch_indices"]) if "patch_indices" in data else None)
        except Exception as exc:  # truncated by a power loss, or not ours: encode again
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None
        if emb.frame_embeds.ndim != 2 or emb.frame_mask.shape != emb.frame_embeds.shape[:1]:
            log.warning("ignoring malformed cache entry %s", path)
            return None
        return emb

    def save_video(self, sha: str, emb: VideoEmbedding) -> None:
        self._describe()
        arrays = {"frame_embeds": np.asarray(emb.frame_embeds, np.float32),
                  "frame_mask": np.asarray(emb.frame_mask, np.int64)}
        if emb.patch_indices is not None:
            arrays["patch_indices"] = np.asarray(emb.patch_indices, np.int64)
        atomic_write_bytes(self.video_file(sha), npz_bytes(arrays), fsync=False)

    # texts ----------------------------------------------------------------------------------
    def _text_table(self) -> dict[str, np.ndarray]:
        if self._texts is None:
            table: dict[str, np.ndarray] = {}
            folder = self.dir / "texts"
            for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
                try:
                    with np.load(path, allow_pickle=False) as data:
                        keys, embeds = data["keys"], np.array(data["embeds"])
                except Exception as exc:
                    log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
                    continue
                if embeds.ndim != 2 or len(keys) != len(embeds):
                    continue
                for k, row in zip(keys.tolist(), embeds):
                    table[k] = row
            self._texts = table
        return self._texts

    def load_texts(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached embeddings (``[D]`` rows) of those caption keys that are cached."""
        table = self._text_table()
        return {k: table[k] for k in keys if k in table}

    def save_texts(self, keys: Sequence[str], embeds: np.ndarray) -> None:
        """Store one chunk of caption embeddings (a single atomic file)."""
        if not len(keys):
            return
        self._describe()
        key_array = np.array(list(keys), dtype="U64")
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
        arrays = {"keys": key_array, "embeds": np.asarray(embeds, np.float32)}
        atomic_write_bytes(self.dir / "texts" / f"{name}.npz", npz_bytes(arrays), fsync=False)
        table = self._text_table()
        for k, row in zip(keys, arrays["embeds"]):
            table[k] = row


# --------------------------------------------------------------------------------------------
# encoding through the cache
# --------------------------------------------------------------------------------------------

@dataclass
class EncodedVideos:
    """Embeddings of the videos that could be read, in input order, and what happened to each.

    ``skipped`` lists ``(path, reason)`` of unreadable videos (only with ``skip_bad``).
    ``n_encoded`` videos went through the model this time, ``n_cached`` came from the cache,
    ``n_reused`` from ``known`` (e.g. an existing index).
    """

    paths: list[Path]
    sha256: list[str]
    frame_embeds: np.ndarray
    frame_mask: np.ndarray
    patch_indices: Optional[np.ndarray]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_encoded: int = 0
    n_cached: int = 0
    n_reused: int = 0
    seconds_hashing: float = 0.0
    seconds_encoding: float = 0.0


def _bar(total: int, desc: str, progress: bool, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress or total == 0, leave=False,
                dynamic_ncols=True)


def encode_videos_cached(
    encoder,
    paths: Sequence[str | os.PathLike],
    cache: Optional[EmbeddingCache],
    *,
    skip_bad: bool = False,
    chunk_size: int = 32,
    progress: bool = True,
    known: Optional[Mapping[str, VideoEmbedding]] = None,
    on_chunk: Optional[Callable[[int], None]] = None,
    workers: int = 0,
) -> EncodedVideos:
    """Embeddings of ``paths``: from ``known``, else the cache, else encoded (then cached).

    Args:
        encoder: a :class:`runtime.encoder.BundleEncoder` (only ``encode_video_files`` is used).
        paths: video files; the result keeps their order, minus skipped ones.
        cache: where to look up and store entries; ``None`` encodes everything.
        skip_bad: record unreadable videos in ``skipped`` and go on. Without it the first
            unreadable video raises :class:`runtime.video.VideoDecodeError` naming the file
            (after the readable videos of its chunk have been cached).
        chunk_size: videos encoded (and written to the cache) per step; an interrupted run
            loses at most this many.
        known: embeddings keyed by file SHA-256 that need neither cache nor model.
        on_chunk: called with the number of videos encoded so far after each chunk.
        workers: decoding threads passed to the encoder when > 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    paths = [Path(p) for p in paths]
    start = time.perf_counter()
    shas, found, bad, n_cached, n_reused = _look_up(paths, cache, known, skip_bad, progress)
    seconds_hashing = time.perf_counter() - start

    # Encode what is missing, one file per distinct content, chunk by chunk.
    todo: dict[str, Path] = {}
    for path, sha in zip(paths, shas):
        if sha is not None and sha not in found and sha not in todo:
            todo[sha] = path
    start = time.perf_counter()
    n_encoded = _encode_missing(encoder, list(todo.items()), cache, found, bad, skip_bad=skip_bad,
                                chunk_size=chunk_size, progress=progress, on_chunk=on_chunk, workers=workers)
    seconds_encoding = time.perf_counter() - start

    kept = [(p, s) for p, s in zip(paths, shas) if s is not None and s in found]
    skipped = [(str(p), bad[str(p)]) for p, s in zip(paths, shas) if s is None or s not in found]
    frame_embeds, frame_mask, patch_indices = _stack([found[s] for _, s in kept])
    return EncodedVideos([p for p, _ in kept], [s for _, s in kept], frame_embeds, frame_mask, patch_indices,
                         skipped, n_encoded, n_cached, n_reused, seconds_hashing, seconds_encoding)


def _look_up(paths: list[Path], cache: Optional[EmbeddingCache], known: Optional[Mapping[str, VideoEmbedding]],
             skip_bad: bool, progress: bool):
    """Hash every file and take what `known` or the cache already holds.

    Returns (sha per path or None when unreadable, sha -> embedding found, path -> reason it is
    unreadable, number from the cache, number from `known`).
    """
    found: dict[str, VideoEmbedding] = {}
    shas: list[Optional[str]] = []
    bad: dict[str, str] = {}
    n_cached = n_reused = 0
    bar = _bar(len(paths), "checking cache", progress, "video")
    for path in paths:
        try:
            sha = file_sha256(path)
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read file ({exc})"
            if not skip_bad:
                raise VideoDecodeError(path, reason) from exc
            bad[str(path)] = reason
            shas.append(None)
            bar.update()
            continue
        shas.append(sha)
        if sha not in found:
            if known is not None and sha in known:
                found[sha] = known[sha]
                n_reused += 1
            elif cache is not None and (hit := cache.load_video(sha)) is not None:
                found[sha] = hit
                n_cached += 1
        bar.update()
    bar.close()
    return shas, found, bad, n_cached, n_reused


def _encode_missing(encoder, items: list[tuple[str, Path]], cache: Optional[EmbeddingCache],
                    found: dict[str, VideoEmbedding], bad: dict[str, str], *, skip_bad: bool, chunk_size: int,
                    progress: bool, on_chunk: Optional[Callable[[int], None]], workers: int) -> int:
    """Encode (sha, path) items chunk by chunk into `found` (and the cache); unreadable ones into `bad`.

    Each chunk is cached before the next starts, so an interrupted run loses at most one chunk.
    Returns how many videos were encoded.
    """
    n_encoded = 0
    bar = _bar(len(items), "encoding videos", progress, "video")
    try:
        for c0 in range(0, len(items), chunk_size):
            chunk = items[c0:c0 + chunk_size]
            extra = {"workers": workers} if workers > 1 else {}
            result = encoder.encode_video_files([p for _, p in chunk], skip_bad=True, progress=False, **extra)
            by_path = {str(Path(p)): i for i, p in enumerate(result.paths)}
            for sha, path in chunk:
                i = by_path.get(str(path))
                if i is None:
                    continue
                emb = VideoEmbedding(
                    np.asarray(result.frame_embeds[i], np.float32), np.asarray(result.frame_mask[i], np.int64),
                    None if result.patch_indices is None else np.asarray(result.patch_indices[i], np.int64))
                if cache is not None:
                    cache.save_video(sha, emb)
                found[sha] = emb
                n_encoded += 1
            reasons = {str(Path(p)): r for p, r in result.skipped}
            for _, path in chunk:
                if str(path) in by_path:
                    continue
                reason = reasons.get(str(path), "the encoder returned no embedding for it")
                if not skip_bad:
                    raise VideoDecodeError(path, reason)
                bad[str(path)] = reason
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(n_encoded)
    finally:
        bar.close()
    return n_encoded


def _stack(embeddings: list[VideoEmbedding]):
    """(frame_embeds, frame_mask, patch_indices or None) stacked over videos; empty arrays for none."""
    if not embeddings:
        return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.int64), None
    frame_embeds = np.stack([e.frame_embeds for e in embeddings]).astype(np.float32, copy=False)
    frame_mask = np.stack([e.frame_mask for e in embeddings]).astype(np.int64, copy=False)
    have_patches = all(e.patch_indices is not None for e in embeddings)
    patch_indices = np.stack([e.patch_indices for e in embeddings]) if have_patches else None
    return frame_embeds, frame_mask, patch_indices


def encode_texts_cached(encoder, texts: Sequence[str], cache: Optional[EmbeddingCache], *,
                        chunk_size: int = 4096, progress: bool = True) -> tuple[np.ndarray, int]:
    """``[N, D]`` float32 embeddings of ``texts`` (cached by text checksum) and how many were encoded.

    Identical captions are encoded once.
    """
    keys = [text_sha256(t) for t in texts]
    have = cache.load_texts(keys) if cache is not None else {}
    todo: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if key not in have and key not in todo:
            todo[key] = text
    items = list(todo.items())
    bar = _bar(len(items), "encoding texts", progress, "text")
    try:
        for c0 in range(0, len(items), chunk_size):
            chunk = items[c0:c0 + chunk_size]
            embeds = np.asarray(encoder.encode_texts([t for _, t in chunk]), np.float32)
            if embeds.shape[0] != len(chunk):
                raise RuntimeError(f"encode_texts returned {embeds.shape[0]} rows for {len(chunk)} texts")
            if cache is not None:
                cache.save_texts([k for k, _ in chunk], embeds)
            for (k, _), row in zip(chunk, embeds):
                have[k] = row
            bar.update(len(chunk))
    finally:
        bar.close()
    if not keys:
        return np.zeros((0, 0), np.float32), 0
    return np.stack([have[k] for k in keys]).astype(np.float32, copy=False), len(items)

