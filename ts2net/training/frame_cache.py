"""Training data: a decoded-frame cache and torch Datasets over a benchmark split.

Why a cache: decoding and resizing every clip costs far more than a small model's step, and a
training run reads each clip once per epoch. So each video is decoded ONCE per (split, size,
max_frames) with `runtime.video.load_video` -- the exact preprocessing the exported runtime uses --
and kept in a float16 memory map (half the disk of float32; fp16 keeps ~3 significant digits of
the normalised pixels, far below what training notices). Epochs then only slice the map.

Cache layout (one directory per split/size/max_frames)::

    frames.f16   raw float16 rows [rows, max_frames, 3, size, size], one row per video
    index.json   {"videos": {video_id: {"row", "key", "mask"}}, "rows": allocated rows, ...}

A row is valid only when index.json lists it with the video file's current key (byte size and
mtime): the index is replaced atomically (os.replace) only after the rows it describes are
flushed, so an interrupted fill leaves a consistent cache and the next fill decodes only what is
missing or changed. Fillers of one cache take turns (an flock on .fill.lock), so runs started
together on one dataset decode each clip once. A video that fails to decode raises `VideoDecodeError` naming the file; it is
never stored as zeros (that would look like an empty clip and train on garbage).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from runtime.video import VideoDecodeError, load_video
from runtime.files import atomic_write_text, waiting_lock

CACHE_VERSION = 1
INDEX_NAME, FRAMES_NAME, LOCK_NAME = "index.json", "frames.f16", ".fill.lock"
_SAVE_EVERY_S = 10.0  # how often a long fill publishes its progress (bounded loss on interruption)


class FrameCacheError(RuntimeError):
    """A cache that cannot be used (wrong layout, missing rows); the message says what to do."""


def file_key(path: str | os.PathLike) -> str:
    """Identity of a video file's content for the cache: byte size and modification time.

    Cheap (one stat) and changes whenever the benchmark generator re-renders a clip, since it
    writes a new file and renames it into place.
    """
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _decode(job: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode one video (module level so a process pool can pickle it)."""
    path, max_frames, size = job
    return load_video(path, max_frames=max_frames, size=size)


class FrameCache:
    """Decoded frames of one split at one (size, max_frames), filled once and memory-mapped."""

    def __init__(self, root: str | os.PathLike, split: str, size: int, max_frames: int):
        self.split, self.size, self.max_frames = split, int(size), int(max_frames)
        self.dir = Path(root) / f"{split}-s{self.size}-t{self.max_frames}"
        self.row_shape = (self.max_frames, 3, self.size, self.size)
        self.row_bytes = int(np.prod(self.row_shape)) * 2
        self._index = self._read_index()
        self._map: np.memmap | None = None

    # ------------------------------------------------------------------ index
    def _read_index(self) -> dict:
        path = self.dir / INDEX_NAME
        fresh = {"version": CACHE_VERSION, "split": self.split, "size": self.size,
                 "max_frames": self.max_frames, "dtype": "float16", "rows": 0, "videos": {}}
        if not path.is_file():
            return fresh
        index = json.loads(path.read_text())
        layout = {k: index.get(k) for k in ("version", "size", "max_frames", "dtype")}
        if layout != {k: fresh[k] for k in layout}:
            # a different layout cannot share rows; start over rather than misread the map
            return fresh
        frames = self.dir / FRAMES_NAME
        have = frames.stat().st_size // self.row_bytes if frames.is_file() else 0
        index["videos"] = {v: e for v, e in index["videos"].items() if e["row"] < have}
        return index

    def _write_index(self) -> None:
        atomic_write_text(self.dir / INDEX_NAME, json.dumps(self._index, sort_keys=True))

    def missing(self, videos: Mapping[str, str | os.PathLike]) -> list[str]:
        """Video ids whose cached row is absent or stale (file changed since it was decoded)."""
        out = []
        for vid, path in videos.items():
            entry = self._index["videos"].get(vid)
            if entry is None or entry["key"] != file_key(path):
                out.append(vid)
        return out

    # ------------------------------------------------------------------ filling
    def fill(self, videos: Mapping[str, str | os.PathLike], workers: int = 0, progress: bool = True) -> int:
        """Decode every listed video that is not cached yet; returns how many were decoded.

        `videos` maps video id -> file. With `workers` > 1 decoding runs in that many processes
        (results are written by this process only, so the map has a single writer).
        """
        for vid, path in videos.items():
            if not os.path.isfile(path):
                raise VideoDecodeError(path, f"file not found (video {vid!r} of split {self.split!r})")
        if not self.missing(videos):
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        # one filler at a time (e.g. `make -j2 train-demo` starts two runs on one cache): the second
        # waits, then re-reads the index and decodes only what the first did not
        with waiting_lock(self.dir / LOCK_NAME):
            self._index = self._read_index()
            return self._fill_locked(videos, workers, progress)

    def _fill_locked(self, videos: Mapping[str, str | os.PathLike], workers: int, progress: bool) -> int:
        todo = self.missing(videos)
        if not todo:
            return 0
        entries = self._index["videos"]
        rows = {}
        for vid in todo:
            old = entries.pop(vid, None)  # a stale row is unlisted before it is overwritten
            if old is not None:
                rows[vid] = old["row"]
            else:
                rows[vid] = self._index["rows"]
                self._index["rows"] += 1
        frames_path = self.dir / FRAMES_NAME
        with open(frames_path, "ab") as handle:  # create, then grow to the allocated rows
            handle.truncate(max(handle.tell(), self._index["rows"] * self.row_bytes))
        self._map = None
        out = np.memmap(frames_path, dtype=np.float16, mode="r+", shape=(self._index["rows"], *self.row_shape))
        bar = tqdm(total=len(todo), desc=f"caching {self.split} frames", unit="video", disable=not progress)
        last_save = time.monotonic()
        try:
            for vid, path, (frames, mask) in _decode_all(videos, todo, self.max_frames, self.size, workers):
                self._check(path, frames, mask)
                out[rows[vid]] = frames
                entries[vid] = {"row": rows[vid], "key": file_key(path), "mask": [int(m) for m in mask]}
                bar.update()
                if time.monotonic() - last_save > _SAVE_EVERY_S:
                    out.flush()
                    self._write_index()
                    last_save = time.monotonic()
        finally:
            bar.close()
            out.flush()
            del out
            self._write_index()  # publish whatever finished, also when a video failed
        return len(todo)

    def _check(self, path: str, frames: np.ndarray, mask: np.ndarray) -> None:
        if frames.shape != self.row_shape or mask.shape != (self.max_frames,):
            raise FrameCacheError(f"{path}: decoder returned frames {frames.shape} / mask {mask.shape}, "
                                  f"expected {self.row_shape} / ({self.max_frames},)")
        if not mask.any():
            raise VideoDecodeError(path, "no frame sampled (mask is all zero)")
        if not np.isfinite(frames).all():
            raise VideoDecodeError(path, "decoded frames contain NaN or inf")

    # ------------------------------------------------------------------ reading
    def rows_of(self, video_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers int64 [n] and masks int64 [n, max_frames] of cached videos."""
        entries = self._index["videos"]
        absent = [v for v in video_ids if v not in entries]
        if absent:
            raise FrameCacheError(f"{len(absent)} video(s) of split {self.split!r} are not in the cache at "
                                  f"{self.dir} (first: {absent[:3]}); call fill() first")
        rows = np.array([entries[v]["row"] for v in video_ids], dtype=np.int64)
        masks = np.array([entries[v]["mask"] for v in video_ids], dtype=np.int64).reshape(-1, self.max_frames)
        return rows, masks

    def frames(self) -> np.memmap:
        """The read-only frame map [rows, T, 3, S, S] float16 (opened lazily, per process)."""
        if self._map is None:
            path = self.dir / FRAMES_NAME
            if not path.is_file() or self._index["rows"] == 0:
                raise FrameCacheError(f"{path}: the cache is empty; call fill() first")
            self._map = np.memmap(path, dtype=np.float16, mode="r", shape=(self._index["rows"], *self.row_shape))
        return self._map

    def __getstate__(self):
        # a memmap pickles as a full in-memory copy; DataLoader workers reopen the file instead
        state = dict(self.__dict__)
        state["_map"] = None
        return state


def _decode_all(videos: Mapping[str, str | os.PathLike], todo: Sequence[str], max_frames: int, size: int,
                workers: int) -> Iterator[tuple[str, str, tuple[np.ndarray, np.ndarray]]]:
    """Yield (video id, path, load_video result) in `todo` order; any failure names the file."""
    paths = [os.fspath(videos[v]) for v in todo]
    if workers <= 1 or len(todo) <= 1:
        for vid, path in zip(todo, paths):
            with _naming(path):
                result = load_video(path, max_frames=max_frames, size=size)
            yield vid, path, result
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_decode, (path, max_frames, size)) for path in paths]
        for vid, path, future in zip(todo, paths, futures):
            with _naming(path):
                result = future.result()
            yield vid, path, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _naming(path: str):
    """Re-raise a decoder failure as VideoDecodeError naming `path` (VideoDecodeError passes as is)."""
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV / PIL / numpy raise many types
        raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------- split description
@dataclass
class CaptionedSplit:
    """One split of a benchmark as arrays: unique videos, all captions and who owns which.

    `tokens[i]` are the ids of caption i; `video_of_caption[i]` indexes `video_ids`.
    """

    name: str
    video_ids: list[str]
    video_paths: dict[str, Path]
    captions: list[str]
    video_of_caption: np.ndarray  # int64 [n_captions]
    tokens: np.ndarray            # int64 [n_captions, max_words]
    partner: np.ndarray | None = None  # int64 [n_videos]: the hard-pair partner's index, -1 for none

    def __post_init__(self) -> None:
        if self.partner is None:
            self.partner = np.full(len(self.video_ids), -1, dtype=np.int64)

    @property
    def captions_of_video(self) -> list[np.ndarray]:
        order = np.argsort(self.video_of_caption, kind="stable")
        bounds = np.searchsorted(self.video_of_caption[order], np.arange(len(self.video_ids) + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(len(self.video_ids))]


def load_split(data_dir: str | os.PathLike, split: str, tokenizer, max_words: int,
               max_clips: int | None = None) -> CaptionedSplit:
    """Read a synthbench (MSR-VTT style) split; `max_clips` keeps the first N clips in file order."""
    from synthbench import load_annotations

    ann = load_annotations(data_dir)
    pairs = ann[split]
    if not pairs:
        raise ValueError(f"{data_dir}: split {split!r} has no captions (was it generated?)")
    video_ids: list[str] = []
    position: dict[str, int] = {}
    for vid, _ in pairs:
        if vid not in position and (max_clips is None or len(video_ids) < max_clips):
            position[vid] = len(video_ids)
            video_ids.append(vid)
    kept = [(vid, text) for vid, text in pairs if vid in position]
    captions = [text for _, text in kept]
    # hard pairs (subsets.json "pairs"), kept only when both members are in the split
    partners = ann.subsets.get("pairs", {})
    partner = np.array([position.get(partners.get(v), -1) for v in video_ids], dtype=np.int64)
    return CaptionedSplit(
        name=split, video_ids=video_ids, video_paths={v: ann.video_path(v) for v in video_ids},
        captions=captions, video_of_caption=np.array([position[v] for v, _ in kept], dtype=np.int64),
        tokens=np.asarray(tokenizer.encode_batch(captions, max_words), dtype=np.int64), partner=partner)


# ---------------------------------------------------------------------------- datasets
class _CachedVideos:
    """Frames of a split's videos, read from a filled FrameCache (shared by both datasets)."""

    def __init__(self, cache: FrameCache, video_ids: Sequence[str]):
        self.cache = cache
        self.rows, self.masks = cache.rows_of(video_ids)

    def get(self, video: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = np.asarray(self.cache.frames()[self.rows[video]], dtype=np.float32)
        return torch.from_numpy(frames), torch.from_numpy(self.masks[video].copy())


class TrainClips(Dataset):
    """One item per clip: (input_ids [L], frames [T,3,S,S] float32, mask [T] int64).

    The caption is drawn among the clip's captions by a generator seeded with (seed, epoch, clip),
    so an epoch's choices do not depend on worker processes, item order or earlier epochs --
    which is what makes a resumed run repeat an uninterrupted one exactly. Call `set_epoch`.
    Both members of a hard pair draw with the lower member's index, so they get the same phrasing
    variant: captions that differ only in the words for what the two scenes differ in.
    """

    def __init__(self, split: CaptionedSplit, cache: FrameCache, seed: int = 0):
        self.split, self.seed, self.epoch = split, int(seed), 0
        self.videos = _CachedVideos(cache, split.video_ids)
        self.caption_choices = split.captions_of_video
        self.tokens = torch.from_numpy(split.tokens)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def caption_index(self, clip: int) -> int:
        choices = self.caption_choices[clip]
        partner = int(self.split.partner[clip])
        key = min(clip, partner) if partner >= 0 else clip
        pick = np.random.default_rng([self.seed, self.epoch, key]).integers(len(choices))
        return int(choices[pick])

    def __len__(self) -> int:
        return len(self.split.video_ids)

    def __getitem__(self, clip: int):
        frames, mask = self.videos.get(clip)
        return self.tokens[self.caption_index(clip)], frames, mask


class PairedBatchSampler:
    """Global batches that keep every hard pair together; yields this process's slice of each.

    Why: the contrastive loss only learns what tells a batch's clips apart. Random batches almost
    never hold a scene and its twin that differs only in motion direction or in a small object, so
    the words for those differences would get no gradient; here both members always share a batch.

    Per epoch the pairs and the singles (themselves drawn into random twos) form units of two in an
    order seeded by (seed, epoch) only, so a resumed epoch, and any number of processes, see the
    same global batches; process r takes positions [r*B/W, (r+1)*B/W) of each global batch B. An
    odd global batch cannot hold only whole pairs; then the units are simply concatenated.
    The last incomplete batch (and an odd single) are dropped, as DistributedSampler(drop_last) does.

    Two levers for the hard pairs (docs/demo.md, "What was tried"): `pair_repeats` k puts each pair
    k times into an epoch (k presentations; never twice in one batch, where it would be its own
    negative), and during the first `pairs_only_epochs` epochs only the pairs are used (a
    curriculum: the epoch is then a pass over the pairs alone). Both need an even global batch.
    """

    def __init__(self, partner: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 pair_repeats: int = 1, pairs_only_epochs: int = 0):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not a multiple of the {world_size} processes")
        partner = np.asarray(partner, dtype=np.int64)
        n = len(partner)
        for i, j in enumerate(partner):
            if j >= 0 and (j >= n or partner[j] != i or j == i):
                raise ValueError(f"hard pairs are not symmetric: clip {i} names {j} as its partner")
        if pair_repeats < 1 or pairs_only_epochs < 0:
            raise ValueError(f"pair_repeats {pair_repeats} must be >= 1 and pairs_only_epochs "
                             f"{pairs_only_epochs} >= 0")
        if (pair_repeats > 1 or pairs_only_epochs) and batch_size % 2:
            raise ValueError(f"pair repeats / a pairs-only curriculum need an even global batch, not {batch_size}")
        self.pairs = [(i, int(j)) for i, j in enumerate(partner) if i < j]
        if pairs_only_epochs and not self.pairs:
            raise ValueError("a pairs-only curriculum needs hard pairs in the train split; there are none")
        self.singles = np.flatnonzero(partner < 0)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, int(seed)
        self.pair_repeats, self.pairs_only_epochs = int(pair_repeats), int(pairs_only_epochs)
        self.per_process = batch_size // world_size
        self.epoch = 0
        self._batches: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def pairs_only(self, epoch: int) -> bool:
        return epoch < self.pairs_only_epochs

    def __len__(self) -> int:
        return self.batches_in_epoch(self.epoch)

    def batches_in_epoch(self, epoch: int) -> int:
        """Global batches (= steps) of an epoch; epochs of a curriculum differ in length."""
        if self.pair_repeats == 1:
            singles = 0 if self.pairs_only(epoch) else 2 * (len(self.singles) // 2)
            return (2 * len(self.pairs) + singles) // self.batch_size
        return len(self._global_batches(epoch))

    def global_batches(self) -> list[list[int]]:
        return self._global_batches(self.epoch)

    def _global_batches(self, epoch: int) -> list[list[int]]:
        if self._batches is not None and self._batches[0] == epoch:
            return self._batches[1]
        rng = np.random.default_rng([self.seed, epoch])
        singles = rng.permutation(self.singles)
        units = [list(p) for p in self.pairs] * self.pair_repeats
        if not self.pairs_only(epoch):
            units += [[int(singles[i]), int(singles[i + 1])] for i in range(0, len(singles) - 1, 2)]
        ordered = [units[i] for i in rng.permutation(len(units))]
        b = self.batch_size
        if self.pair_repeats == 1:  # no unit repeats: plain concatenation (also for an odd batch)
            flat = [c for u in ordered for c in u]
            batches = [flat[k * b:(k + 1) * b] for k in range(len(flat) // b)]
        else:
            batches = _pack_without_repeats(ordered, b)
        self._batches = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.per_process
        for batch in self.global_batches():
            yield batch[lo:lo + self.per_process]


def _pack_without_repeats(units: list[list[int]], batch_size: int) -> list[list[int]]:
    """Fill batches of `batch_size` (even) with units of two in order, deferring a unit whose clips
    are already in the current batch to the next one; an incomplete last batch is dropped."""
    pending: list[list[int]] = []
    queue = list(units)
    batches: list[list[int]] = []
    while queue or pending:
        batch: list[int] = []
        held: set[int] = set()
        still: list[list[int]] = []
        for unit in pending + queue:
            if len(batch) < batch_size and not held.intersection(unit):
                batch += unit
                held.update(unit)
            else:
                still.append(unit)
        if len(batch) < batch_size:
            break
        batches.append(batch)
        pending, queue = [], still
    return batches


class SplitVideos(Dataset):
    """One item per unique video of a split: (frames, mask), for encoding at evaluation."""

    def __init__(self, split: CaptionedSplit, cache: FrameCache):
        self.videos = _CachedVideos(cache, split.video_ids)
        self.n = len(split.video_ids)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, video: int):
        return self.videos.get(video)


def cached_split(split: CaptionedSplit, cache_root: str | os.PathLike, size: int, max_frames: int,
                 workers: int = 0, progress: bool = True, fill: bool = True) -> FrameCache:
    """The split's FrameCache, filled first unless `fill=False` (then it must already be full)."""
    cache = FrameCache(cache_root, split.name, size, max_frames)
    if fill:
        cache.fill(split.video_paths, workers=workers, progress=progress)
    return cache
