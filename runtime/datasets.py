"""Retrieval annotations: which captions describe which video files, and optional hard subsets.

Accepted annotation files (the format is decided by the file, not by a flag):

* MSR-VTT 1k-A ``MSRVTT_JSFUSION_test.csv``: columns ``key, vid_key, video_id, sentence``, one
  caption per video. Like the official dataloader we only read ``video_id`` and ``sentence``;
  ``key`` / ``vid_key`` are not required.
* a generic CSV with ``video_id`` and ``caption`` (or ``sentence``) columns, any number of
  captions per video (one row each);
* JSON Lines, one object per line: ``{"video_id": ..., "caption": ...}`` (``sentence`` accepted
  too).

Each video id names the file ``{videos_dir}/{video_id}.mp4``; when that is absent the other
common container extensions are tried (:data:`VIDEO_EXTENSIONS`), so a folder of ``.avi`` or
``.webm`` clips works unchanged. Every error says which file, line and column is at fault,
because a 1000-line annotation file with one bad row is otherwise a needle in a haystack.

Hard subsets (``subsets.json``) are a JSON object whose list values are named subsets of video
ids (``"motion": [...]``, ``"small_object": [...]``) and whose optional ``"pairs"`` object maps a
video id to the id of its confusable partner (the same scene with one change). Ids that are not
part of the evaluated set (for example the train split of a generated benchmark) are ignored
and counted, because one subsets file usually covers every split. Other object-valued keys
(e.g. ``pair_change`` notes) are descriptive and ignored.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "VIDEO_EXTENSIONS",
    "SUBSETS_FILENAME",
    "AnnotationError",
    "Caption",
    "RetrievalSet",
    "Subsets",
    "read_annotations",
    "find_video_file",
    "list_video_files",
    "list_video_entries",
    "read_subsets",
    "default_subsets_path",
    "load_retrieval_set",
    "subset_summary",
]

#: Tried in this order when ``{video_id}.mp4`` does not exist.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".3gp")
#: Looked for beside the annotation file when no subsets file is given.
SUBSETS_FILENAME = "subsets.json"
#: Column names accepted for the caption text, in order of preference.
CAPTION_COLUMNS = ("caption", "sentence")
#: How many offending rows an error message lists before summarising.
_SHOWN = 10


class AnnotationError(ValueError):
    """An annotation or subsets file that cannot be used; the message names file, line, column."""


@dataclass(frozen=True)
class Caption:
    """One query text, its video id and where it came from (``file:line`` for messages)."""

    video_id: str
    text: str
    line: int


@dataclass(frozen=True)
class Subsets:
    """Named hard subsets restricted to the evaluated videos, plus confusable pairs.

    ``groups`` maps a subset name to its video ids (in dataset order), ``pairs`` maps a video id
    to its partner (both evaluated), ``ignored`` counts ids per key that were not evaluated.
    """

    path: Optional[Path]
    groups: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def restrict(self, keep: set[str]) -> "Subsets":
        """The same subsets without the videos not in ``keep`` (e.g. after skipping bad files)."""
        groups = {name: [v for v in ids if v in keep] for name, ids in self.groups.items()}
        pairs = {a: b for a, b in self.pairs.items() if a in keep and b in keep}
        return Subsets(self.path, groups, pairs, dict(self.ignored))


@dataclass
class RetrievalSet:
    """Captions and the videos they describe, in a fixed order.

    ``video_ids`` are unique, in order of first appearance; ``captions[i]`` describes
    ``video_ids[caption_video[i]]``. With MSR-VTT 1k-A (one caption per video, one row per
    video) ``caption_video`` is ``arange(N)`` and the similarity matrix is square.
    """

    annotations: Path
    format: str
    captions: list[Caption]
    video_ids: list[str]
    video_paths: dict[str, Path]
    subsets: Optional[Subsets] = None

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.captions]

    @property
    def caption_video(self) -> np.ndarray:
        """``int64 [Nt]``: column (video index) of each caption; the ``gt_index`` of t2v."""
        position = {v: i for i, v in enumerate(self.video_ids)}
        return np.array([position[c.video_id] for c in self.captions], dtype=np.int64)

    def paths(self) -> list[Path]:
        return [self.video_paths[v] for v in self.video_ids]

    def without_videos(self, dropped: Sequence[str]) -> tuple["RetrievalSet", list[Caption]]:
        """This set minus some videos *and their captions* (never zero-filled stand-ins).

        Returns the reduced set and the captions that were removed with the videos.
        """
        gone = set(dropped)
        kept_captions = [c for c in self.captions if c.video_id not in gone]
        removed = [c for c in self.captions if c.video_id in gone]
        kept_ids = [v for v in self.video_ids if v not in gone]
        reduced = RetrievalSet(
            self.annotations, self.format, kept_captions, kept_ids,
            {v: self.video_paths[v] for v in kept_ids},
            self.subsets.restrict(set(kept_ids)) if self.subsets is not None else None)
        return reduced, removed


# --------------------------------------------------------------------------------------------
# annotation files
# --------------------------------------------------------------------------------------------

def read_annotations(path: str | os.PathLike) -> tuple[list[Caption], str]:
    """Captions of an annotation file and its format name.

    The format is ``"jsonl"`` for ``.jsonl`` / ``.ndjson`` files; otherwise the file is read as
    CSV and called ``"msrvtt-1ka"`` when its header is the JSFUSION one, ``"csv"`` otherwise.
    Raises :class:`AnnotationError` naming the file, line and column of the first problem (all
    empty captions are listed at once, up to a few).
    """
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: annotation file not found")
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        captions, fmt = _read_jsonl(p), "jsonl"
    else:
        captions, fmt = _read_csv(p)
    if not captions:
        raise AnnotationError(f"{p}: no captions (the file has a header but no data rows)")
    return captions, fmt


def _read_utf8(p: Path) -> str:
    """The file's text (a UTF-8 BOM dropped); a non-UTF-8 byte is an error naming its line and column."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise AnnotationError(f"{p}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                              "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc


def _read_csv(p: Path) -> tuple[list[Caption], str]:
    text = _read_utf8(p)
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError(f"{p}: empty file (expected a CSV header with video_id and "
                              f"caption/sentence columns)") from None
    names = [h.strip() for h in header]
    if "video_id" not in names:
        raise AnnotationError(f"{p}: missing column 'video_id' (header has: {', '.join(names)})")
    caption_col = next((c for c in CAPTION_COLUMNS if c in names), None)
    if caption_col is None:
        raise AnnotationError(f"{p}: missing caption column: expected 'caption' or 'sentence' "
                              f"(header has: {', '.join(names)})")
    vid_i, cap_i = names.index("video_id"), names.index(caption_col)
    fmt = "msrvtt-1ka" if {"key", "vid_key", "video_id", "sentence"} <= set(names) else "csv"
    captions: list[Caption] = []
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) <= max(vid_i, cap_i):
            problems.append(f"line {line}: {len(row)} field(s), expected at least {max(vid_i, cap_i) + 1}")
            continue
        video_id, text = row[vid_i].strip(), row[cap_i].strip()
        if not video_id:
            problems.append(f"line {line}: column 'video_id' is empty")
        elif not text:
            problems.append(f"line {line}: column '{caption_col}' is empty (video_id {video_id!r})")
        else:
            captions.append(Caption(video_id, text, line))
    if problems:
        raise AnnotationError(_problem_list(p, problems))
    return captions, fmt


def _read_jsonl(p: Path) -> list[Caption]:
    captions: list[Caption] = []
    problems: list[str] = []
    lines = _read_utf8(p).splitlines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {number}: expected a JSON object, got {type(obj).__name__}")
            continue
        if "video_id" not in obj:
            problems.append(f"line {number}: missing key 'video_id'")
            continue
        key = next((c for c in CAPTION_COLUMNS if c in obj), None)
        if key is None:
            problems.append(f"line {number}: missing key 'caption' (or 'sentence')")
            continue
        video_id, text = obj["video_id"], obj[key]
        if not isinstance(video_id, (str, int)) or isinstance(video_id, bool) or not str(video_id).strip():
            problems.append(f"line {number}: key 'video_id' must be a non-empty string, got {video_id!r}")
        elif not isinstance(text, str) or not text.strip():
            problems.append(f"line {number}: key '{key}' is empty or not a string (video_id {video_id!r})")
        else:
            captions.append(Caption(str(video_id).strip(), text.strip(), number))
    if problems:
        raise AnnotationError(_problem_list(p, problems))
    return captions


def _problem_list(p: Path, problems: list[str]) -> str:
    shown = problems[:_SHOWN]
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    if len(problems) == 1:
        return f"{p}: {problems[0]}"
    return f"{p}: {len(problems)} bad rows:\n  " + "\n  ".join(shown) + more


# --------------------------------------------------------------------------------------------
# video files
# --------------------------------------------------------------------------------------------

def find_video_file(videos_dir: str | os.PathLike, video_id: str,
                    listing: Optional[dict[str, Path]] = None) -> Optional[Path]:
    """``{videos_dir}/{video_id}.mp4``, else the first existing other extension, else None.

    Extensions match in any case (``clipA.MP4``, as `ts2net index` accepts), exact lower case
    first. ``listing`` (from :func:`video_files_by_id`) avoids one directory scan per id.
    """
    base = Path(videos_dir)
    for ext in VIDEO_EXTENSIONS:
        candidate = base / f"{video_id}{ext}"
        if candidate.is_file():
            return candidate
    listing = video_files_by_id(base) if listing is None else listing
    return listing.get(video_id)


def video_files_by_id(videos_dir: str | os.PathLike) -> dict[str, Path]:
    """Regular files of ``videos_dir`` with a video extension in any case, by id (first extension wins)."""
    order = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, tuple[int, Path]] = {}
    for entry in Path(videos_dir).iterdir():
        rank = order.get(entry.suffix.lower())
        if rank is None or entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.stem not in found or rank < found[entry.stem][0]:
            found[entry.stem] = (rank, entry)
    return {k: v for k, (_, v) in found.items()}


def list_video_files(videos_dir: str | os.PathLike) -> dict[str, Path]:
    """Every video file directly in ``videos_dir``, keyed by id (the file name without extension).

    Sorted by id so an index built twice from the same folder has the same row order. Two files
    with the same id (``a.mp4`` and ``a.avi``) are an error: search results would be ambiguous.
    Entries with a video extension that are not readable files are left out; see
    :func:`list_video_entries` for them and the reason.
    """
    return list_video_entries(videos_dir)[0]


def unusable_entry_reason(entry: Path) -> Optional[str]:
    """Why a directory entry with a video extension cannot be a video file, or None if it can."""
    if entry.is_symlink():
        try:
            entry.resolve(strict=True)
        except RuntimeError:
            return "symbolic link loop"
        except OSError as exc:
            if getattr(exc, "errno", None) == 40:  # ELOOP
                return "symbolic link loop"
            return f"broken symbolic link (target {os.readlink(entry)!r} does not exist)"
    if entry.is_dir():
        return "a directory, not a video file"
    if not entry.is_file():
        return "not a regular file"
    return None


def list_video_entries(videos_dir: str | os.PathLike) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """(video files keyed by id, [(path, reason)] of entries with a video extension that are unusable)."""
    base = Path(videos_dir)
    if not base.is_dir():
        raise AnnotationError(f"{base}: videos folder not found")
    found: dict[str, Path] = {}
    unusable: list[tuple[str, str]] = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        reason = unusable_entry_reason(entry)
        if reason is not None:
            unusable.append((str(entry), reason))
            continue
        if entry.stem in found:
            raise AnnotationError(f"{base}: two files have video id {entry.stem!r}: "
                                  f"{found[entry.stem].name} and {entry.name}")
        found[entry.stem] = entry
    return dict(sorted(found.items())), unusable


def _resolve_videos(annotations: Path, captions: list[Caption], videos_dir: Path,
                    allow_missing: bool) -> dict[str, Path]:
    if not videos_dir.is_dir():
        raise AnnotationError(f"{videos_dir}: videos folder not found (given for {annotations})")
    paths: dict[str, Path] = {}
    missing: list[str] = []
    listing = video_files_by_id(videos_dir)
    for c in captions:
        if c.video_id in paths:
            continue
        found = find_video_file(videos_dir, c.video_id, listing)
        if found is None and allow_missing:
            paths[c.video_id] = videos_dir / f"{c.video_id}{VIDEO_EXTENSIONS[0]}"  # fails to decode later
        elif found is None:
            missing.append(f"line {c.line}: video_id {c.video_id!r}")
            paths[c.video_id] = None  # type: ignore[assignment]  # remember it was reported
        else:
            paths[c.video_id] = found
    if missing:
        exts = "/".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
        if len(missing) == 1:
            raise AnnotationError(f"{annotations}: {missing[0]} has no video file in {videos_dir} "
                                  f"(looked for {{video_id}}.{exts})")
        head = (f"{annotations}: {len(missing)} video id(s) have no video file in {videos_dir} "
                f"(looked for {{video_id}}.{exts}):\n  ")
        more = f"\n  ... and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise AnnotationError(head + "\n  ".join(missing[:_SHOWN]) + more)
    return paths


# --------------------------------------------------------------------------------------------
# hard subsets
# --------------------------------------------------------------------------------------------

def default_subsets_path(annotations: str | os.PathLike) -> Optional[Path]:
    """``subsets.json`` beside the annotation file, if there is one."""
    candidate = Path(annotations).parent / SUBSETS_FILENAME
    return candidate if candidate.is_file() else None


def read_subsets(path: str | os.PathLike, video_ids: Sequence[str]) -> Subsets:
    """Parse a subsets file and keep only the ids in ``video_ids`` (the evaluated videos)."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: subsets file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise AnnotationError(f"{p}: expected a JSON object of subsets, got {type(data).__name__}")
    order = {v: i for i, v in enumerate(video_ids)}
    groups: dict[str, list[str]] = {}
    pairs: dict[str, str] = {}
    ignored: dict[str, int] = {}
    for key, value in data.items():
        if isinstance(value, list):
            bad = [x for x in value if not isinstance(x, str)]
            if bad:
                raise AnnotationError(f"{p}: key {key!r} must be a list of video id strings; "
                                      f"found {bad[0]!r}")
            inside = sorted({v for v in value if v in order}, key=order.__getitem__)
            groups[key] = inside
            ignored[key] = len(set(value)) - len(inside)
        elif key == "pairs":
            if not isinstance(value, dict):
                raise AnnotationError(f"{p}: key 'pairs' must be an object video_id -> partner id, "
                                      f"got {type(value).__name__}")
            outside = 0
            for a, b in value.items():
                if b is None:
                    continue
                if not isinstance(b, str):
                    raise AnnotationError(f"{p}: pairs[{a!r}] must be a video id string, got {b!r}")
                if a in order and b in order:
                    pairs[a] = b
                else:
                    outside += 1
            ignored["pairs"] = outside
        # other keys (e.g. "pair_change" notes) describe the subsets and are not evaluated
    return Subsets(p, groups, pairs, ignored)


# --------------------------------------------------------------------------------------------
# everything together
# --------------------------------------------------------------------------------------------

def load_retrieval_set(annotations: str | os.PathLike, videos_dir: str | os.PathLike,
                       subsets: str | os.PathLike | None | bool = None,
                       allow_missing: bool = False) -> RetrievalSet:
    """Read an annotation file, resolve every video file and attach the hard subsets.

    Args:
        annotations: CSV (1k-A or generic) or JSONL file; see the module docstring.
        videos_dir: folder holding ``{video_id}.mp4`` (or another :data:`VIDEO_EXTENSIONS`).
        subsets: a subsets file; ``None`` uses ``subsets.json`` beside ``annotations`` when
            present; ``False`` disables subsets.
        allow_missing: keep video ids whose file is absent, pointing at the ``.mp4`` name, so
            that ``--skip-bad`` can report them with the other unreadable videos instead of
            refusing the whole run.

    Raises:
        AnnotationError: bad rows, missing columns, or video ids without a file (all listed).
    """
    ann = Path(annotations)
    captions, fmt = read_annotations(ann)
    paths = _resolve_videos(ann, captions, Path(videos_dir), allow_missing)
    video_ids = list(paths)
    if subsets is False:
        subset_path = None
    elif subsets is None or subsets is True:
        subset_path = default_subsets_path(ann)
    else:
        subset_path = Path(subsets)
    parsed = read_subsets(subset_path, video_ids) if subset_path is not None else None
    return RetrievalSet(ann, fmt, captions, video_ids, paths, parsed)


def subset_summary(subsets: Optional[Subsets]) -> Mapping[str, object]:
    """JSON-friendly description of the subsets (for reports)."""
    if subsets is None:
        return {}
    return {"file": str(subsets.path) if subsets.path else None,
            "videos": {k: len(v) for k, v in subsets.groups.items()},
            "pairs": len(subsets.pairs),
            "ignored_ids_not_evaluated": dict(subsets.ignored)}
