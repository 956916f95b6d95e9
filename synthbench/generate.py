"""Dataset writer: plans splits, renders missing clips to MP4, writes MSR-VTT-style annotations.

Layout under ``out_dir`` (see docs/benchmark.md)::

    videos/{video_id}.mp4    MSRVTT_data.json   train.csv  val.csv  test.csv
    subsets.json             scenes.jsonl       meta.json  .progress.jsonl

Everything is a deterministic function of ``seed`` and the per-split
parameters.  Generation is resumable: each finished clip is recorded in
``.progress.jsonl`` with the hash of its render spec, and a clip is skipped
when its MP4 exists and its recorded hash matches.  Every file is written to
a temporary name and moved into place with ``os.replace``, so an interrupted
run never leaves a truncated MP4 or JSON behind under a final name.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np
from tqdm import tqdm

from . import render
from .captions import aligned_caption_sets, aligned_captions
from .scene import SPLITS, GenParams, SceneSpec, plan_split

#: Bump whenever the sampling, rendering, grammar or encoding changes.
#: 1.1: hard pairs in the train split (test split unchanged); 1.2: RGB -> YUV 4:2:0 done here in
#: integer arithmetic instead of by swscale, and x264 without mb-tree: both had given different
#: bytes for the same clip in different processes.
GENERATOR_VERSION = "1.2"
DEFAULT_COUNTS = {"train": 5000, "val": 250, "test": 1000}
_PROGRESS = ".progress.jsonl"


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

def pick_codec() -> str:
    """libx264 where PyAV was built with it, else the always-present mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


#: x264's macroblock-tree rate control gave different bytes for the same YUV input in some pool
#: workers (one clip: 3-4 variants in 16 encodes; with mbtree off: 1 variant in 320 encodes of 16
#: clips).  The cost is size: mb-tree moves bits away from frames nothing refers to, so clips are
#: about 2x larger without it (35.2 vs 16.6 MB for the 1,000-clip test split; quality is higher).
_X264_EXACT = {"x264-params": "mbtree=0"}


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 of an H x W x 3 uint8 frame, as PyAV's packed (3H/2) x W array.

    Why not let PyAV convert: swscale's RGB24 -> YUV420P scaler gave different
    bytes for the same frame in different processes (a forked pool worker vs
    the parent), so the same seed did not always give the same clip.  This is
    integer arithmetic, hence identical everywhere.  Luma uses the usual 8-bit
    BT.601 coefficients; chroma is computed from the sum of each 2 x 2 block
    (box-filtered, centred between the four pixels), with round-half-up.
    H and W must be even (every synthbench frame size is).
    """
    h, w, _ = rgb.shape
    c = rgb.astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    block = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]  # (H/2, W/2, 3) sums of 4
    rs, gs, bs = block[..., 0], block[..., 1], block[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    planes = [y.reshape(-1), u.reshape(-1), v.reshape(-1)]
    return np.concatenate(planes).astype(np.uint8).reshape(h * 3 // 2, w)


def encode_clip(spec: SceneSpec, path: Path, codec: str | None = None) -> int:
    """Render ``spec`` and write it as an MP4 at ``path`` atomically; returns its size.

    The same spec gives the same bytes in any process: frames are converted
    to YUV 4:2:0 by :func:`rgb_to_yuv420p` (not swscale), and x264 runs
    single-threaded (threaded x264 is not bit-exact) without macroblock-tree
    rate control (``_X264_EXACT``); one thread per clip also suits the pool.
    """
    codec = codec or pick_codec()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(spec.fps_num, spec.fps_den))
            stream.width, stream.height = spec.width, spec.height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            if codec == "libx264":
                stream.codec_context.options = {"preset": "veryfast", "crf": "20", "threads": "1", **_X264_EXACT}
            else:
                stream.codec_context.bit_rate = 800_000
            for i, rgb in enumerate(render.iter_frames(spec)):
                frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def _render_job(job: tuple[SceneSpec, str, str]) -> tuple[str, str, int]:
    spec, videos_dir, codec = job
    size = encode_clip(spec, Path(videos_dir) / f"{spec.video_id}.mp4", codec)
    return spec.video_id, spec.render_hash() + ":" + codec, size


def _render_all(jobs: list, workers: int, progress: bool, on_done) -> None:
    bar = tqdm(total=len(jobs), desc="rendering clips", unit="clip", disable=not progress or not jobs)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                on_done(*_render_job(job))
                bar.update()
            return
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(workers) as pool:
            for result in pool.imap_unordered(_render_job, jobs, chunksize=1):
                on_done(*result)
                bar.update()
    finally:
        bar.close()


# --------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitPlan:
    split: str
    n: int
    params: GenParams
    specs: list[SceneSpec]
    captions: dict[str, list[str]]


def plan(seed: int, split: str, n: int, params: GenParams) -> SplitPlan:
    """Specs and captions of a split; cheap (no rendering)."""
    specs = plan_split(seed, split, n, params)
    by_id = {s.video_id: s for s in specs}
    caps = {}
    for s in specs:
        # Pair members share phrasing draws and simplification level, so
        # their captions differ only in the words for what differs.
        members = [s, by_id[s.pair]] if s.pair else [s]
        if split == "train":
            caps[s.video_id] = aligned_caption_sets(members, params.train_captions)[0]
        else:
            caps[s.video_id] = [aligned_captions(members)[0]]
    if split != "train":
        texts = [c[0] for c in caps.values()]
        # Unique content keys imply unique strings; this guards the grammar.
        assert len(set(texts)) == len(texts), f"duplicate {split} captions"
    return SplitPlan(split, n, params, specs, caps)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def _read_progress(path: Path) -> dict[str, str]:
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["video_id"]] = rec["hash"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption
    return done


def _write_annotations(out: Path, plans: list[SplitPlan]) -> None:
    videos, sentences = [], []
    for p in plans:
        for s in p.specs:
            videos.append({
                "video_id": s.video_id, "category": s.category, "split": p.split,
                "fps": s.fps, "duration": s.duration, "width": s.width, "height": s.height,
                "n_frames": s.n_frames, "subset": s.subset,
            })
            for text in p.captions[s.video_id]:
                sentences.append({"video_id": s.video_id, "caption": text, "sen_id": len(sentences)})
    _atomic_write_bytes(out / "MSRVTT_data.json", _json_bytes({"videos": videos, "sentences": sentences}))

    by_split = {p.split: p for p in plans}
    for split, name in (("train", "train.csv"), ("val", "val.csv"), ("test", "test.csv")):
        target = out / name
        if split not in by_split:
            target.unlink(missing_ok=True)
            continue
        p = by_split[split]
        if split == "train":
            data = _csv_bytes(["video_id"], ([s.video_id] for s in p.specs))
        else:  # MSR-VTT 1k-A layout: one sentence per video
            rows = (
                (f"ret{i}", "msr" + s.video_id[len("video"):], s.video_id, p.captions[s.video_id][0])
                for i, s in enumerate(p.specs)
            )
            data = _csv_bytes(["key", "vid_key", "video_id", "sentence"], rows)
        _atomic_write_bytes(target, data)

    subsets: dict = {"motion": [], "small_object": [], "pairs": {}, "pair_change": {}}
    for p in plans:
        for s in p.specs:
            if s.subset != "ordinary":
                subsets[s.subset].append(s.video_id)
                subsets["pairs"][s.video_id] = s.pair
                subsets["pair_change"][s.video_id] = s.pair_change
    _atomic_write_bytes(out / "subsets.json", _json_bytes(subsets))

    lines = []
    for p in plans:
        for s in p.specs:
            rec = s.to_dict()
            rec["captions"] = p.captions[s.video_id]
            lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":")))
    _atomic_write_bytes(out / "scenes.jsonl", ("\n".join(lines) + "\n").encode() if lines else b"")


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def generate_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = DEFAULT_COUNTS["train"],
    n_val: int = DEFAULT_COUNTS["val"],
    n_test: int = DEFAULT_COUNTS["test"],
    splits: Sequence[str] = SPLITS,
    workers: int = 2,
    progress: bool = True,
    params: GenParams | None = None,
) -> dict:
    """Generate (or finish generating) the benchmark under ``out_dir``.

    Only the splits named in ``splits`` are (re)generated, with the counts
    given here; splits generated by an earlier run into the same directory
    are kept with their recorded counts and parameters and stay in the
    annotations.  A directory made with another seed or generator version
    is refused rather than silently mixed.  Returns a summary dict.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    params = params or GenParams()
    if isinstance(splits, str):
        splits = tuple(x.strip() for x in splits.split(",") if x.strip())
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; choose from {SPLITS}")
    for stale in [*videos_dir.glob(".*.tmp"), *out.glob(".*.tmp")]:  # left by a killed run
        stale.unlink(missing_ok=True)

    old_meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else None
    if old_meta is not None:
        if old_meta.get("seed") != seed or old_meta.get("version") != GENERATOR_VERSION:
            raise ValueError(
                f"{out} holds a dataset made with seed {old_meta.get('seed')} / generator version "
                f"{old_meta.get('version')}, not seed {seed} / version {GENERATOR_VERSION}; delete it "
                f"or use another --out directory"
            )
    counts = {"train": n_train, "val": n_val, "test": n_test}
    wanted: dict[str, tuple[int, GenParams]] = {}
    for split in SPLITS:
        if split in splits:
            if counts[split] > 0:
                wanted[split] = (counts[split], params)
        elif old_meta and split in old_meta.get("splits", {}):
            rec = old_meta["splits"][split]
            wanted[split] = (rec["n"], GenParams.from_dict(rec["params"]))
    plans = [plan(seed, split, n, p) for split, (n, p) in wanted.items()]

    codec = pick_codec()
    progress_path = out / _PROGRESS
    done = _read_progress(progress_path)

    def is_done(s: SceneSpec) -> bool:
        return done.get(s.video_id) == s.render_hash() + ":" + codec and (videos_dir / f"{s.video_id}.mp4").exists()

    jobs = [(s, str(videos_dir), codec) for p in plans if p.split in splits for s in p.specs if not is_done(s)]
    jobs.sort(key=lambda j: -j[0].n_frames)  # longest first balances the pool's tail
    with open(progress_path, "a") as log:
        def on_done(video_id: str, digest: str, size: int) -> None:
            log.write(json.dumps({"video_id": video_id, "hash": digest}) + "\n")
            log.flush()
            done[video_id] = digest

        _render_all(jobs, workers, progress, on_done)

    complete = [p for p in plans if all(is_done(s) for s in p.specs)]
    complete_names = {p.split for p in complete}
    incomplete = sorted(p.split for p in plans if p.split not in complete_names)
    _write_annotations(out, complete)
    meta = {
        "generator": "synthbench",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "codec": codec,
        # Incomplete splits stay listed (without annotations) so that a later
        # run with --splits naming them finishes them with the same counts.
        "splits": {
            p.split: {
                "n": p.n,
                "complete": p.split in complete_names,
                "params": p.params.to_dict(),
                "n_sentences": sum(len(c) for c in p.captions.values()),
                "subsets": {k: sum(s.subset == k for s in p.specs) for k in ("ordinary", "motion", "small_object")},
            }
            for p in plans
        },
        "counts": {p.split: p.n for p in complete},
    }
    _atomic_write_bytes(out / "meta.json", _json_bytes(meta))
    size = sum(f.stat().st_size for f in videos_dir.glob("*.mp4"))
    return {
        "out_dir": str(out),
        "seed": seed,
        "codec": codec,
        "counts": meta["counts"],
        "rendered": len(jobs),
        "skipped": sum(len(p.specs) for p in plans if p.split in splits) - len(jobs),
        "incomplete_splits": incomplete,
        "video_bytes": size,
        "seconds": round(time.perf_counter() - started, 2),
    }


@dataclass(frozen=True)
class Annotations:
    """Parsed annotations: per split, a list of (video_id, caption) in file order."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    videos: dict[str, dict]  # video_id -> the record of MSRVTT_data.json
    subsets: dict  # subsets.json ({} if absent)
    root: Path

    def __getitem__(self, split: str) -> list[tuple[str, str]]:
        if split not in SPLITS:
            raise KeyError(split)
        return getattr(self, split)

    def video_path(self, video_id: str) -> Path:
        return self.root / "videos" / f"{video_id}.mp4"


def load_annotations(root: str | os.PathLike) -> Annotations:
    """Read ``MSRVTT_data.json`` (and ``subsets.json``) of a generated dataset."""
    root = Path(root)
    data = json.loads((root / "MSRVTT_data.json").read_text())
    videos = {v["video_id"]: v for v in data["videos"]}
    per_split: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for sen in data["sentences"]:
        per_split[videos[sen["video_id"]]["split"]].append((sen["video_id"], sen["caption"]))
    subsets_path = root / "subsets.json"
    subsets = json.loads(subsets_path.read_text()) if subsets_path.exists() else {}
    return Annotations(videos=videos, subsets=subsets, root=root, **per_split)
