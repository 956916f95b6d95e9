"""Search at scale: the index's engine (scan, faiss, milvus) and the threshold re-ranking.

* :func:`sync_engine` (called by ``ts2net index --engine``) makes the index's engine hold exactly
  its videos and records it in ``index.json["engine"]``;
* :func:`search_embeddings` answers text embeddings with exact TS2-Net scores, through the
  recorded engine (``scan``: every video; ``faiss`` / ``milvus``: frame candidates + the
  threshold rule of :mod:`runtime.search.threshold`);
* ``ts2net bench-search`` (:mod:`runtime.search.bench`) measures them on synthetic collections.

docs/search.md explains the bound, the engines and what is measured.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .engines import ENGINE_NAMES, EngineOutOfDate, EngineUnavailable, engine_class
from .frames import LiveSet
from .threshold import Hits, SearchStats, exhaustive_search, threshold_search

__all__ = ["ENGINE_NAMES", "EngineUnavailable", "EngineOutOfDate", "Hits", "SearchStats", "sync_engine",
           "open_searcher", "Searcher", "search_embeddings"]


def sync_engine(index, engine: str, *, exact: bool = False, progress: bool = True, **options) -> dict:
    """Build or update ``index``'s engine in place; returns the ``index.json["engine"]`` section.

    Holds the index directory's build lock (the one `ts2net index` holds while encoding), so an
    engine sync never interleaves with a rebuild or another sync of the same index.
    """
    from ..files import LockHeldError, directory_lock
    from ..index import LOCK_FILE, VideoIndexError

    if engine not in ENGINE_NAMES:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_NAMES)}, got {engine!r}")
    try:
        with directory_lock(index.path, "ts2net index", LOCK_FILE):
            return _sync_locked(index, engine, exact, progress, options)
    except LockHeldError as exc:
        raise VideoIndexError(str(exc)) from exc


def _sync_locked(index, engine: str, exact: bool, progress: bool, options: dict) -> dict:
    from ..index import open_index
    from .engines import write_engine_section

    index = open_index(index.path)    # what is committed now, read under the lock
    if engine == "scan":
        section = {"name": "scan", "exact": True, "rescoring": "every video, from the index's arrays"}
        old = index.meta.get("engine") or {}
        if old.get("name") not in (None, "scan"):
            section["replaced"] = old.get("name")
        write_engine_section(index.path, section)
        index.meta["engine"] = section
        return section
    return engine_class(engine).sync(index, {"exact": exact, **options}, progress=progress)


class Searcher:
    """An index opened for searching through its engine (thread-safe: concurrent ``search`` calls
    share the read-only arrays and engine, and each keeps its own state)."""

    def __init__(self, index, engine: Optional[str] = None):
        self.index = index
        section = index.meta.get("engine") or {"name": "scan"}
        name = engine or section["name"]
        if engine and engine != section["name"] and engine != "scan":
            raise ValueError(f"{index.path}: the index's engine is {section['name']!r}; build a {engine} engine with "
                             f"`ts2net index --out {index.path} --engine {engine}`")
        self.name = name
        self.live = LiveSet.from_meta(index.meta) if name != "scan" else None
        self.engine = None
        if name != "scan":
            self.engine = engine_class(name)(index.path, section)
            self.engine.check_current(self.live)

    def search(self, text_embeds: np.ndarray, k: int, check_scores=None) -> list[Hits]:
        """Top-k per text. ``check_scores(matrix)``: called with the scan's full score matrix, or with
        the returned scores (engines, whose frames were checked finite when indexed); may raise."""
        text = np.asarray(text_embeds, np.float32)
        if text.ndim != 2 or text.shape[1] != self.index.frame_embeds.shape[2]:
            raise ValueError(f"text embeddings must have shape [B, {self.index.frame_embeds.shape[2]}], "
                             f"got {list(text.shape)}")
        args = self.index.similarity_args
        if self.engine is None:
            return exhaustive_search(text, self.index.frame_embeds, self.index.frame_mask, args, k, check_scores)
        e = self.engine
        hits = threshold_search(text, self.index.frame_embeds, self.index.frame_mask, args, self.live, e.fetch, k,
                                cos_tolerance=e.cos_tolerance, n_frames=e.n_frames, max_depth=e.max_depth,
                                side=e.groups)
        if check_scores is not None:
            width = max((len(h.scores) for h in hits), default=0)
            check_scores(np.array([np.pad(h.scores, (0, width - len(h.scores))) for h in hits], np.float32))
        return hits

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def open_searcher(index, engine: Optional[str] = None) -> Searcher:
    return Searcher(index, engine)


def search_embeddings(index, text_embeds: np.ndarray, k: int, engine: Optional[str] = None) -> list[Hits]:
    return Searcher(index, engine).search(text_embeds, k)


def hits_json(index, hits: Hits) -> dict[str, Any]:
    ids = index.video_ids
    return {"results": [{"rank": r + 1, "video_id": ids[i], "score": float(s), "path": str(index.video_path(i))}
                        for r, (i, s) in enumerate(zip(hits.rows.tolist(), hits.scores.tolist()))],
            "rescored": hits.stats.rescored, "stop_rule_met": hits.stats.stop_rule_met,
            "fallback_scan": hits.stats.fallback}
