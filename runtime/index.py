"""`ts2net index` / `ts2net search`: a folder of videos -> an on-disk index -> ranked videos for a text.

Why the index stores *per-frame* embeddings and a frame mask rather than one vector per video:
the TS2-Net similarity weights each video's frames by a softmax that depends on the query
(``runtime.similarity``), so there is no query-independent video vector; a search computes the
exact model score for every video, chunk by chunk over a memory-mapped array.

Index directory layout (``index.json`` is the commit point, written last and atomically)::

    index.json                    format, bundle id/path, backend, precision, similarity args,
                                  videos (id, file, sha256, frames), skipped files, array names
    frame_embeds.<gen>.npy        [N, T, D] float16 (default) or float32
    frame_mask.<gen>.npy          [N, T] uint8 (1 real frame, 0 padding)

The arrays carry a generation tag in their names, so a rebuild writes new files next to the
old ones, then switches ``index.json`` to them in one ``os.replace``, then deletes the generation
it replaced (only that one): a crash at any point leaves a consistent index (the old or the new).
A build holds an exclusive ``flock`` on ``.index.lock`` in the directory from start to end, so a
second ``ts2net index`` on the same ``--out`` stops at once with "another `ts2net index` holds the
lock" instead of interleaving writes (two unlocked builds used to delete each other's arrays).

Resuming: a rebuild hashes every video file and takes its embedding, in this order, from the
existing index (same bundle, backend, precision, preprocessing identity, i.e. our decode and
transform rules' version and the PyAV / FFmpeg / Pillow versions, and a dtype at least as precise), from the
embedding cache (filled every few videos while encoding, so an interrupted run loses at most one
chunk), or from the model. So re-running after an interruption or after adding videos encodes
only what is new or changed.

The bundle's similarity constants are copied into ``index.json``: search needs the bundle only
for the text side (tokenizer + text graph), and refuses a bundle whose id differs from the one
the videos were encoded with (embeddings of different models are not comparable).
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import datasets
from .files import LockHeldError, directory_lock
from .embedding_cache import (EmbeddingCache, VideoEmbedding, atomic_save_npy, atomic_write_bytes,
                              default_cache_dir, encode_videos_cached)
from .frame_similarity import require_finite_scores
from .video import VideoDecodeError, preprocessing_identity

log = logging.getLogger(__name__)

__all__ = ["INDEX_FORMAT", "VideoIndexError", "VideoIndex", "open_index", "build_index", "search_index",
           ]

INDEX_FORMAT = "ts2net-index"
INDEX_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".index.lock"  # held (flock) by the building process
DTYPES = ("float16", "float32")


# index.json keys every reader relies on, and their JSON types
REQUIRED_KEYS = {"videos": list, "arrays": dict, "bundle": dict, "similarity": dict, "backend": str,
                 "precision": str, "videos_dir": str}


class VideoIndexError(ValueError):
    """An index directory that cannot be used (missing, inconsistent, or built with another bundle)."""


@dataclass
class VideoIndex:
    """An opened index: metadata plus memory-mapped arrays (nothing big is read up front)."""

    path: Path
    meta: dict[str, Any]
    frame_embeds: np.ndarray
    frame_mask: np.ndarray

    @property
    def video_ids(self) -> list[str]:
        return [v["id"] for v in self.meta["videos"]]

    @property
    def similarity_args(self) -> dict[str, Any]:
        return dict(self.meta["similarity"])

    def video_path(self, i: int) -> Path:
        return Path(self.meta["videos_dir"]) / self.meta["videos"][i]["file"]

    def __len__(self) -> int:
        return len(self.meta["videos"])


def open_index(path) -> VideoIndex:
    """Open an index directory, checking that ``index.json`` and its arrays agree."""
    root = Path(path)
    meta_path = root / INDEX_FILE
    if not meta_path.is_file():
        raise VideoIndexError(f"{root}: no {INDEX_FILE}; build one with `ts2net index --out {root}`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VideoIndexError(f"{meta_path}: not readable JSON ({exc})") from exc
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
        raise VideoIndexError(f"{meta_path}: not a {INDEX_FORMAT} v{INDEX_VERSION} index "
                          f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    rebuild = f"rebuild it with `ts2net index --out {root}`"
    problems = [f"{key} ({kind.__name__})" for key, kind in REQUIRED_KEYS.items() if not isinstance(meta.get(key), kind)]
    listed = meta.get("arrays") if isinstance(meta.get("arrays"), dict) else {}
    problems += [f"arrays.{name} (file name)" for name in ("frame_embeds", "frame_mask")
                 if not isinstance(listed.get(name), str) or "/" in listed.get(name, "/")]
    if problems:
        raise VideoIndexError(f"{meta_path}: missing or malformed {', '.join(problems)}; the file is damaged or "
                              f"hand-edited: {rebuild}")
    arrays = {}
    for name in ("frame_embeds", "frame_mask"):
        file = root / listed[name]
        if not file.is_file():
            raise VideoIndexError(f"{root}: {file.name} listed in {INDEX_FILE} is missing (incomplete copy?); {rebuild}")
        try:
            arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise VideoIndexError(f"{file}: not a complete .npy array ({exc}; truncated copy?); {rebuild}") from exc
    n = len(meta["videos"])
    fe, fm = arrays["frame_embeds"], arrays["frame_mask"]
    if fe.ndim != 3 or fe.shape[0] != n or fm.shape != fe.shape[:2]:
        raise VideoIndexError(f"{root}: arrays do not match {INDEX_FILE}: {n} videos, frame_embeds "
                          f"{list(fe.shape)}, frame_mask {list(fm.shape)}")
    return VideoIndex(root, meta, fe, fm)


def _reusable_rows(out: Path, bundle_id: str, backend: str, precision: str, dtype: str) -> dict[str, VideoEmbedding]:
    """Embeddings of an existing index at ``out`` that a rebuild may take as they are."""
    if not (out / INDEX_FILE).is_file():
        return {}
    try:
        old = open_index(out)
    except VideoIndexError as exc:
        log.warning("not reusing the existing index: %s", exc)
        return {}
    m = old.meta
    same_model = (m["bundle"]["id"], m["backend"], m["precision"]) == (bundle_id, backend, precision)
    precise_enough = m["dtype"] == dtype or m["dtype"] == "float32"
    same_pixels = m.get("preprocessing") == preprocessing_identity()
    if not same_pixels:
        log.warning("re-encoding every video: the index was built with other decoding/preprocessing (%s, now %s)",
                    m.get("preprocessing"), preprocessing_identity())
    if not (same_model and precise_enough and same_pixels):
        return {}
    return {v["sha256"]: VideoEmbedding(np.asarray(old.frame_embeds[i], np.float32),
                                        np.asarray(old.frame_mask[i], np.int64))
            for i, v in enumerate(m["videos"])}


def build_index(
    bundle_dir,
    videos_dir,
    out,
    backend: str = "ort-cpu",
    precision: Optional[str] = None,
    skip_bad: bool = False,
    batch_size: int = 16,
    *,
    cache_dir=None,
    dtype: str = "float16",
    progress: bool = True,
    chunk_size: Optional[int] = None,
    workers: int = 0,
    server: Optional[str] = None,
) -> dict[str, Any]:
    """Encode every video of ``videos_dir`` into the index directory ``out``; returns index.json's dict.

    ``server``: a Triton URL (``ts2net serve`` or a ``ts2net triton`` repository) that runs the
    video graph instead of a local backend; the index then records backend ``triton``.

    ``cache_dir``: embedding cache root (``None`` = default location, ``False`` = no cache,
    which also means an interrupted build starts over). ``chunk_size``: videos encoded between
    two cache writes (default ``max(2 * batch_size, 16)``). ``workers``: video decoding threads.
    Raises VideoIndexError when another process is building into ``out``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VideoIndexError(f"--out {out} is a file; an index is a directory (pick another path)")
    try:
        with directory_lock(out, "ts2net index", LOCK_FILE):
            return _build_locked(bundle_dir, videos_dir, out, backend, precision, skip_bad, batch_size, cache_dir,
                                 dtype, progress, chunk_size, workers, start, server)
    except LockHeldError as exc:
        raise VideoIndexError(str(exc)) from exc


def _build_locked(bundle_dir, videos_dir, out: Path, backend, precision, skip_bad, batch_size, cache_dir, dtype,
                  progress, chunk_size, workers, start, server) -> dict[str, Any]:
    """build_index's work, run while this process holds the index directory's lock."""
    from .backends import default_precision
    from .bundle import open_bundle
    from .encoder import BundleEncoder

    files, unusable = datasets.list_video_entries(videos_dir)
    if unusable and not skip_bad:
        path, reason = unusable[0]
        raise VideoDecodeError(path, reason + (f" (and {len(unusable) - 1} more such entries)" if len(unusable) > 1
                                               else ""))
    if not files:
        raise VideoIndexError(f"{videos_dir}: no video files (looked for {', '.join(datasets.VIDEO_EXTENSIONS)})"
                              + (f"; {len(unusable)} unusable entries skipped" if unusable else ""))
    bundle = open_bundle(bundle_dir)
    if server:
        backend = "triton"
    precision = precision or default_precision(bundle, backend)
    cache = None
    if cache_dir is not False:
        cache = EmbeddingCache(default_cache_dir() if cache_dir is None else cache_dir, bundle.content_id, backend,
                               precision)
    known = _reusable_rows(out, bundle.content_id, backend, precision, dtype)

    if server:
        from .triton.client import ServerEncoder

        encoder = ServerEncoder(bundle, server, batch_size=batch_size)
    else:
        encoder = BundleEncoder(bundle, backend=backend, precision=precision, batch_size=batch_size)
    with encoder:
        result = encode_videos_cached(encoder, list(files.values()), cache, skip_bad=skip_bad,
                                      chunk_size=chunk_size or max(2 * batch_size, 16), progress=progress,
                                      known=known, workers=workers)
    if not result.paths:
        raise VideoIndexError(f"{videos_dir}: no readable video ({len(result.skipped)} skipped)")

    id_of = {str(p): v for v, p in files.items()}
    previous = None
    if (out / INDEX_FILE).is_file():
        try:
            previous = json.loads((out / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
    gen = datetime.now().strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
    arrays = {"frame_embeds": f"frame_embeds.{gen}.npy", "frame_mask": f"frame_mask.{gen}.npy"}
    atomic_save_npy(out / arrays["frame_embeds"], result.frame_embeds.astype(dtype))
    atomic_save_npy(out / arrays["frame_mask"], (result.frame_mask != 0).astype(np.uint8))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "bundle": {"path": str(Path(bundle_dir).resolve()), "id": bundle.content_id,
                   "model": bundle.manifest.get("model", {}).get("name"), "max_frames": bundle.max_frames,
                   "max_words": bundle.max_words, "embed_dim": bundle.embed_dim},
        "backend": backend,
        "precision": precision,
        "server": server,
        "dtype": dtype,
        "preprocessing": preprocessing_identity(),
        "similarity": bundle.similarity_args,
        "videos_dir": str(Path(videos_dir).resolve()),
        "n_videos": len(result.paths),
        "videos": [{"id": id_of[str(p)], "file": Path(p).name, "sha256": s, "frames": int(np.count_nonzero(m))}
                   for p, s, m in zip(result.paths, result.sha256, result.frame_mask)],
        "skipped": [{"video_id": Path(p).stem, "path": p, "reason": r} for p, r in unusable]
                   + [{"video_id": id_of.get(p), "path": p, "reason": r} for p, r in result.skipped],
        "arrays": arrays,
        # the search engine's state (runtime.search) survives a rebuild; a stale one is refused at search time
        "engine": (previous or {}).get("engine") or {"name": "scan"},
        "build": {"encoded": result.n_encoded, "from_cache": result.n_cached, "reused_from_index": result.n_reused,
                  "seconds": round(time.perf_counter() - start, 3),
                  "cache_dir": str(cache.dir) if cache else None},
    }
    atomic_write_bytes(out / INDEX_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    # delete only the generation this build replaced (never files this process did not supersede)
    replaced = (previous or {}).get("arrays") if isinstance((previous or {}).get("arrays"), dict) else {}
    for name in replaced.values():
        if isinstance(name, str) and name not in arrays.values() and "/" not in name:
            (out / name).unlink(missing_ok=True)
    return meta


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------

QUERY_ECHO_CHARS = 200


def shorten(text: str, limit: int = QUERY_ECHO_CHARS) -> str:
    """`text` for echoing back to a person: at most `limit` characters, the length said when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def query_warning(query: str) -> Optional[str]:
    """Why a (non-empty) query's ranking means little, or None: no word at all, only symbols.

    CLIP's byte-level BPE has a token for everything, so no query is "unknown" to it; but one
    without any letter or digit ("!!!???") matches videos by punctuation alone.
    """
    if not re.search(r"\w", query):
        return f"{shorten(query)!r} has no word (only punctuation or symbols); its ranking means little"
    return None


def index_bundle(index: VideoIndex, bundle_dir=None):
    """The bundle to encode queries for ``index`` with: ``bundle_dir``, else the one recorded in the
    index; refused when its id differs from the index's (embeddings of two models do not compare)."""
    from .bundle import open_bundle

    path = Path(bundle_dir) if bundle_dir is not None else Path(index.meta["bundle"]["path"])
    if bundle_dir is None and not path.is_dir():
        raise VideoIndexError(f"{index.path}: the bundle recorded in the index, {path}, does not exist here; "
                              f"pass --bundle (a bundle with id {index.meta['bundle']['id']})")
    bundle = open_bundle(path, verify=False)  # files are verified when first used
    if bundle.content_id != index.meta["bundle"]["id"]:
        raise VideoIndexError(f"{index.path} was built with bundle id {index.meta['bundle']['id']} but {path} has id "
                          f"{bundle.content_id}: its text embeddings are not comparable; pass the original --bundle "
                          "or rebuild the index")
    return bundle


def query_backend(index: VideoIndex, bundle: Bundle, backend: str) -> str:
    """The backend that encodes queries for ``index``: ``backend`` itself unless it is "auto", which means
    the index's own backend where it passes its gates here (or is a GPU backend the gates do not cover),
    else the fastest gated backend of the index's precision. Search and explanations share it, so an
    explanation encodes its query exactly as the search whose result it explains."""
    if backend != "auto":
        return backend
    from .path_choice import gated_precisions, resolve

    chosen = index.meta["backend"]
    if (chosen, index.meta["precision"]) not in gated_precisions(bundle, require_real_data=True) and \
            not chosen.startswith(("ort-cuda", "tensorrt")):
        chosen = resolve(bundle, None, index.meta["precision"])[0]
    return chosen


def query_encoder(index: VideoIndex, bundle: Bundle, backend: str, batch_size: int = 16):
    """The encoder of ``index``'s queries on ``backend`` (from query_backend): the index's precision, and the
    text precision the gates allow with it (runtime.path_choice.query_text_precision). Search and
    explanations share it."""
    from .encoder import BundleEncoder
    from .path_choice import query_text_precision

    precision = index.meta["precision"]
    return BundleEncoder(bundle, backend=backend, precision=precision, batch_size=batch_size,
                         text_precision=query_text_precision(bundle, backend, precision))


def search_index(index: VideoIndex, queries: Sequence[str], k: int = 10, *, bundle_dir=None,
                 backend: str = "auto", batch_size: int = 16, engine: Optional[str] = None) -> list[dict[str, Any]]:
    """Rank the indexed videos for each query by the TS2-Net similarity (logit-scaled scores).

    The bundle defaults to the one recorded in the index; its id must match the index's.
    ``engine``: None = the index's recorded engine (``runtime.search``), "scan" = every video.
    Returns one ``{"query", "engine", "results": [{"rank", "video_id", "score", "path"}], "rescored",
    "stop_rule_met", "fallback_scan"}`` per query.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for number, query in enumerate(queries, start=1):
        if not query.strip():
            raise VideoIndexError(f"query {number} is empty: give the text to search for")
        if query_warning(query):
            log.warning("query %s: %s", number, query_warning(query))
    bundle = index_bundle(index, bundle_dir)
    path = bundle.path
    backend = query_backend(index, bundle, backend)
    with query_encoder(index, bundle, backend, batch_size) as enc:
        text = np.asarray(enc.encode_texts(list(queries)), np.float32)
        encoded_with = {"backend": backend, "precision": enc.backend("text").precision}
    from .search import Searcher, hits_json

    def finite(scores: np.ndarray) -> None:   # NaN would neither win nor lose: refuse it, naming the source
        require_finite_scores(scores, text, index.frame_embeds, text_labels=list(queries),
                              video_labels=index.video_ids, text_source=f"text graph of {path} on {backend}",
                              video_source=f"stored in the index {index.path}")

    searcher = Searcher(index, engine)
    try:
        found = searcher.search(text, k, check_scores=finite)
    finally:
        searcher.close()
    return [{"query": q, "engine": searcher.name, "query_encoder": encoded_with, **hits_json(index, h)}
            for q, h in zip(queries, found)]
