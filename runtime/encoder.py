"""Texts and videos -> embeddings with a bundle: tokenizing, decoding, batching over a backend.

Batching is invisible in the results: every row is computed independently by the graphs, so
`encode_*` with any batch size equals one row at a time (a test checks it). Videos that cannot
be decoded are never replaced by zeros (a zero video with mask 0 would get a plausible but
meaningless embedding and pollute every ranking): by default the first one raises, and with
``skip_bad=True`` each one is recorded with its reason and left out of the results.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .backends import Backend, create_backend
from .bundle import Bundle, open_bundle
from .bundle_format import CLIP_MEAN, CLIP_STD
from .video import SampledVideo, VideoDecodeError, sample_video


@dataclass
class VideoBatchResult:
    """Embeddings of the videos that decoded, in input order, and the ones that did not."""

    paths: list[str]
    frame_embeds: np.ndarray            # float32 [n, T, D]
    frame_mask: np.ndarray              # int64 [n, T]
    patch_indices: np.ndarray | None    # int64 [n, T, K], None for models without token selection
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def ids(self) -> list[str]:
        """Video ids: file names without extension (MSR-VTT's `video7020.mp4` -> `video7020`)."""
        return [Path(p).stem for p in self.paths]


@dataclass
class DecodedVideos:
    paths: list[str]
    frames: np.ndarray   # float32 [n, T, 3, S, S]
    mask: np.ndarray     # int64 [n, T]


def sample_bundle_video(bundle: Bundle, path: str | os.PathLike) -> SampledVideo:
    """One video decoded and sampled with the bundle's preprocessing (frames, mask, frame numbers)."""
    pre = bundle.preprocessing
    mean, std = tuple(pre.get("mean", CLIP_MEAN)), tuple(pre.get("std", CLIP_STD))
    return sample_video(path, bundle.max_frames, bundle.image_size, mean, std)


def decode_videos(bundle: Bundle, paths: Sequence[str | os.PathLike], batch_size: int, skip_bad: bool = False,
                  skipped: list[tuple[str, str]] | None = None, progress: bool = True,
                  workers: int = 0) -> Iterator[DecodedVideos]:
    """Decode `paths` with the bundle's preprocessing, `batch_size` videos at a time.

    Memory stays at one batch of frames whatever the number of videos. A `VideoDecodeError`
    raises, or with `skip_bad` is appended to `skipped` as (path, reason). `workers` > 1 decodes
    in threads (PyAV releases the GIL while decoding).
    """
    def load(path: str):
        try:
            video = sample_bundle_video(bundle, path)
            return path, (video.frames, video.mask), None
        except VideoDecodeError as exc:
            if not skip_bad:
                raise
            return path, None, exc.reason

    paths = [os.fspath(p) for p in paths]
    bar = tqdm(total=len(paths), desc="decode+encode videos", unit="video", disable=not progress)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            results = list(pool.map(load, chunk)) if pool else [load(p) for p in chunk]
            kept = [(p, fm) for p, fm, reason in results if fm is not None]
            for path, _, reason in results:
                if reason is not None and skipped is not None:
                    skipped.append((path, reason))
            bar.update(len(chunk))
            if kept:
                yield DecodedVideos([p for p, _ in kept], np.stack([fm[0] for _, fm in kept]),
                                    np.stack([fm[1] for _, fm in kept]))
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


class BundleEncoder:
    """Encode texts and videos with one bundle and one backend kind (backends created on first use)."""

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str = "ort-cpu", precision: str | None = None,
                 batch_size: int = 16, threads: int | None = None, text_precision: str | None = None):
        """precision: the video graph's (and, on most paths, the text graph's) precision.

        text_precision: the text graph's; None = the path's default (runtime.path_choice
        .default_text_precision: FP32 for the CPU bf16 / int8 paths, else `precision`).
        """
        from .path_choice import default_text_precision

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        self.backend_name = backend
        self.precision = precision
        self.text_precision = text_precision if text_precision is not None else default_text_precision(backend,
                                                                                                       precision)
        self.batch_size = batch_size
        self.threads = threads
        self._backends: dict[str, Backend] = {}

    def backend(self, graph: str) -> Backend:
        """The loaded backend of `graph` ("text" / "video")."""
        if graph not in self._backends:
            precision = self.text_precision if graph == "text" else self.precision
            self._backends[graph] = create_backend(self.bundle, graph, self.backend_name, precision,
                                                   threads=self.threads).load()
        return self._backends[graph]

    def _batch(self, graph: str) -> int:
        limit = self.backend(graph).max_batch
        return min(self.batch_size, limit) if limit else self.batch_size

    # -------------------------------------------------------------- text
    def encode_ids(self, ids: np.ndarray, progress: bool = False) -> np.ndarray:
        """int [n, max_words] token ids -> float32 [n, D] text embeddings (not normalized)."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] != self.bundle.max_words or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integer [n, {self.bundle.max_words}] (max_words), got {ids.dtype} "
                             f"{list(ids.shape)}")
        ids = ids.astype(np.int64, copy=False)
        if len(ids) == 0:
            return np.zeros((0, self.bundle.embed_dim), np.float32)
        backend, step = self.backend("text"), self._batch("text")
        out = [backend.infer({"input_ids": np.ascontiguousarray(ids[i:i + step])})["text_embeds"]
               for i in tqdm(range(0, len(ids), step), desc="encode texts", unit="batch", disable=not progress)]
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Captions -> float32 [n, D], tokenized with the bundle's tokenizer."""
        return self.encode_ids(self.bundle.tokenizer().encode_batch(list(texts), max_words=self.bundle.max_words),
                               progress=progress)

    # -------------------------------------------------------------- video
    def encode_frames(self, frames: np.ndarray, mask: np.ndarray, progress: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """frames float32 [n, T, 3, S, S], mask int [n, T] -> (frame_embeds [n, T, D], patch_indices [n, T, K] or None)."""
        frames = np.asarray(frames)
        mask = np.asarray(mask)
        if frames.dtype != np.float32:
            raise ValueError(f"frames must be float32 (normalized pixels), got {frames.dtype}")
        if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
            raise ValueError(f"mask must be integer 0/1, got {mask.dtype}")
        if len(frames) != len(mask):
            raise ValueError(f"frames has {len(frames)} videos but mask has {len(mask)}")
        mask = mask.astype(np.int64, copy=False)
        backend = self.backend("video")
        has_indices = "patch_indices" in backend.output_names
        if len(frames) == 0:
            t, d, k = self.bundle.max_frames, self.bundle.embed_dim, self.bundle.top_k or 0
            return np.zeros((0, t, d), np.float32), (np.zeros((0, t, k), np.int64) if has_indices else None)
        step = self._batch("video")
        embeds, indices = [], []
        for i in tqdm(range(0, len(frames), step), desc="encode videos", unit="batch", disable=not progress):
            out = backend.infer({"frames": np.ascontiguousarray(frames[i:i + step]),
                                 "frame_mask": np.ascontiguousarray(mask[i:i + step])})
            embeds.append(out["frame_embeds"])
            if has_indices:
                indices.append(out["patch_indices"])
        return np.concatenate(embeds), (np.concatenate(indices) if has_indices else None)

    def encode_video_files(self, paths: Sequence[str | os.PathLike], skip_bad: bool = False, progress: bool = True,
                           workers: int = 0) -> VideoBatchResult:
        """Decode (official 1-fps rule) and encode video files, `batch_size` at a time.

        A file that cannot be decoded raises `VideoDecodeError`; with skip_bad=True it is listed
        in `skipped` with its reason and left out (never zero-filled).
        """
        skipped: list[tuple[str, str]] = []
        kept, embeds, masks, indices = [], [], [], []
        for batch in decode_videos(self.bundle, paths, self.batch_size, skip_bad, skipped, progress, workers):
            frame_embeds, patch_indices = self.encode_frames(batch.frames, batch.mask)
            kept += batch.paths
            embeds.append(frame_embeds)
            masks.append(batch.mask)
            if patch_indices is not None:
                indices.append(patch_indices)
        t, d = self.bundle.max_frames, self.bundle.embed_dim
        if not kept:
            has_indices = self.bundle.top_k is not None
            return VideoBatchResult([], np.zeros((0, t, d), np.float32), np.zeros((0, t), np.int64),
                                    np.zeros((0, t, self.bundle.top_k), np.int64) if has_indices else None, skipped)
        return VideoBatchResult(kept, np.concatenate(embeds), np.concatenate(masks),
                                np.concatenate(indices) if indices else None, skipped)

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def __enter__(self) -> "BundleEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
