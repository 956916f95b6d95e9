"""The ``milvus`` engine: frame vectors in a Milvus collection (Milvus Lite file or a server).

Schema: ``id`` INT64 primary key (the frame label ``key << 8 | f``), ``video`` INT64 (the content
key), ``vec`` FLOAT_VECTOR(D) (the unit frame vector), inner-product metric; HNSW (``exact``: FLAT).
One row per frame rather than per video: Milvus returns frames in decreasing cosine order, which
is what the threshold rule consumes (one row per video would need a multi-vector max Milvus does
not rank by). Re-scoring reads the index's local arrays, so the collection holds no other data.

Crash safety: Milvus has no transaction spanning our ``index.json``. Before changing the collection
a sync writes ``milvus_journal.json`` (the keys it is about to insert or delete); a run that finds
a journal treats those keys as possibly half-written: it deletes the ones no longer wanted and
*upserts* the others (primary keys are content-derived, so an upsert replaces a partial write
instead of duplicating it). ``index.json`` records the keys the collection is known to hold.
Videos are added in checkpoints of ``checkpoint_videos``, each flushed and committed.

Default URI: ``<index>/milvus.db`` (Milvus Lite; one process at a time may open the file: for
many processes searching at once point ``--milvus-uri`` at a Milvus server).
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..files import atomic_save_npy, atomic_write_bytes
from .engines import (FLOAT32_COS_TOLERANCE, PIP_SEARCH, STALE_PATTERNS, EngineOutOfDate, EngineUnavailable,
                      FrameEngine, _bar, _diff, _gen, _remove_stale, _rows_for, _weighted, load_groups, save_groups,
                      write_engine_section)
from .frames import FrameGroups, LiveSet, iter_frame_vectors

__all__ = ["MilvusEngine", "DEFAULT_LITE_FILE"]

DEFAULT_LITE_FILE = "milvus.db"
JOURNAL = "milvus_journal.json"
MAX_TOPK = 16384          # Milvus' limit on one search's top-k
BATCH_ROWS = 4096
_CLIENTS: dict[str, object] = {}   # one client per URI per process (Milvus Lite: one server per file)


def _pymilvus():
    try:
        import pymilvus
    except ImportError as exc:
        raise EngineUnavailable(f"the milvus engine needs pymilvus ({exc}): {PIP_SEARCH} "
                                "(or pip install pymilvus milvus-lite)") from None
    return pymilvus


def _is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def connect(uri: str, timeout: float | None = None):
    """A MilvusClient for ``uri`` (a local ``*.db`` file = Milvus Lite), or a clear EngineUnavailable."""
    if uri in _CLIENTS:
        return _CLIENTS[uri]
    import os

    timeout = float(timeout or os.environ.get("TS2NET_MILVUS_TIMEOUT", 10))
    pymilvus = _pymilvus()
    if _is_lite(uri):
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise EngineUnavailable(f"{uri} is a local file, which needs Milvus Lite: pip install milvus-lite "
                                    f"({PIP_SEARCH}); or pass --milvus-uri http://host:19530 for a server") from None
        if not uri.endswith(".db"):
            raise EngineUnavailable(f"Milvus Lite URIs are files ending in .db, got {uri!r}")
    try:
        client = pymilvus.MilvusClient(uri=uri, timeout=timeout)
    except Exception as exc:  # pymilvus raises MilvusException / grpc errors / OSError
        raise EngineUnavailable(f"cannot reach Milvus at {uri} ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                                "start the server or fix --milvus-uri") from None
    _CLIENTS[uri] = client
    return client


def close_all() -> None:
    for uri in list(_CLIENTS):
        try:
            _CLIENTS.pop(uri).close()
        except Exception:  # closing a dead connection must not hide the real result
            pass


def _schema_and_index(client, dim: int, exact: bool, params: dict):
    pymilvus = _pymilvus()
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("video", pymilvus.DataType.INT64)
    schema.add_field("vec", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
    index_params = client.prepare_index_params()
    if exact:
        index_params.add_index("vec", index_type="FLAT", metric_type="IP")
    else:
        index_params.add_index("vec", index_type="HNSW", metric_type="IP",
                               params={"M": params["M"], "efConstruction": params["efConstruction"]})
    return schema, index_params


class MilvusEngine(FrameEngine):
    name = "milvus"
    max_depth = MAX_TOPK

    def __init__(self, index_dir: Path, section: dict):
        super().__init__(index_dir, section)
        self.uri = self.resolve_uri(index_dir, section.get("uri"))
        self.client = connect(self.uri)
        self.collection = section["collection"]
        if not self.client.has_collection(self.collection):
            raise EngineOutOfDate(f"{self.uri}: collection {self.collection} recorded in {index_dir}/index.json is "
                                  f"missing: re-run `ts2net index --out {index_dir} --engine milvus`")
        self.client.load_collection(self.collection)

    @staticmethod
    def resolve_uri(index_dir: Path, uri) -> str:
        """None -> the index's own Lite file; a relative Lite path is relative to the index."""
        if not uri or uri == DEFAULT_LITE_FILE:
            return str(Path(index_dir).resolve() / DEFAULT_LITE_FILE)
        return uri

    @classmethod
    def sync(cls, index, options: dict, *, progress: bool = True) -> dict:
        start = time.perf_counter()
        live = LiveSet.from_meta(index.meta)
        weighted = _weighted(index)
        dim = int(index.frame_embeds.shape[2])
        exact = bool(options.get("exact", False))
        old = index.meta.get("engine") or {}
        given_uri = options.get("milvus_uri")
        uri_field = given_uri or (old.get("uri") if old.get("name") == cls.name else None) or DEFAULT_LITE_FILE
        uri = cls.resolve_uri(index.path, uri_field)
        client = connect(uri)
        params = {"M": 16, "efConstruction": 128, "ef_min": 128, "ef": "max(ef_min, 2 * depth)",
                  "max_depth": MAX_TOPK}
        collection = options.get("milvus_collection") or (old.get("collection") if old.get("name") == cls.name
                                                          else None) or f"ts2net_{secrets.token_hex(4)}"
        reuse = (old.get("name") == cls.name and old.get("collection") == collection and old.get("exact") == exact
                 and old.get("dim") == dim and cls.resolve_uri(index.path, old.get("uri")) == uri
                 and client.has_collection(collection) and (index.path / old.get("keys_file", "")).is_file())
        journal_path = index.path / JOURNAL
        pending_add, pending_remove = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if reuse:
            committed = np.load(index.path / old["keys_file"])
            groups = load_groups(index.path, old)
            params = old["params"]
            if journal_path.is_file():
                j = json.loads(journal_path.read_text(encoding="utf-8"))
                if j.get("collection") == collection:
                    pending_add = np.array(j.get("adding", []), np.int64)
                    pending_remove = np.array(j.get("removing", []), np.int64)
        else:
            if client.has_collection(collection):
                if old.get("collection") == collection or options.get("milvus_collection") is None:
                    client.drop_collection(collection)
                else:
                    raise EngineUnavailable(f"{uri}: collection {collection} exists and is not this index's; "
                                            "choose another --milvus-collection or drop it")
            schema, index_params = _schema_and_index(client, dim, exact, params)
            # Milvus Lite lacks the AllocTimestamp RPC that pymilvus' wait-for-index calls; the call is
            # retried without it, but Lite's in-process gRPC server logs a traceback: keep it quiet
            grpc_log = logging.getLogger("grpc._server")
            level = grpc_log.level
            grpc_log.setLevel(logging.CRITICAL)
            try:
                client.create_collection(collection, schema=schema, index_params=index_params)
            finally:
                grpc_log.setLevel(level)
            committed, groups = np.zeros(0, np.int64), FrameGroups()
        add, remove = _diff(committed, live)
        # half-written keys of an interrupted run: delete the unwanted, upsert the wanted
        remove = np.union1d(remove, np.setdiff1d(np.union1d(pending_add, pending_remove), live.keys))
        upsert = np.intersect1d(np.union1d(pending_add, pending_remove), live.keys)
        add = np.union1d(add, upsert)
        section_base = {"name": cls.name, "exact": exact, "dim": dim, "uri": uri_field if _is_lite(uri) else uri,
                        "resolved_uri": uri, "lite": _is_lite(uri), "collection": collection,
                        "index_type": "FLAT" if exact else "HNSW", "params": params,
                        "cos_tolerance": FLOAT32_COS_TOLERANCE,
                        "rescoring": "exact, from the index's frame_embeds/frame_mask arrays"}

        last_sync = {"added": 0, "removed": int(remove.size), "upserted_after_interruption": int(upsert.size),
                     "fresh": not reuse}

        def commit(keys: np.ndarray) -> dict:
            gen = _gen()
            keys_file = f"engine_keys.{gen}.npy"
            atomic_save_npy(index.path / keys_file, keys.astype(np.int64))
            files = {"keys_file": keys_file, **save_groups(index.path, groups, gen)}
            n_frames = int(client.get_collection_stats(collection)["row_count"])
            section = {**section_base, **files, "n_keys": int(keys.size), "n_frames": n_frames,
                       "grouped_frames": len(groups), "groups": int(len(groups.vectors)),
                       "keys_digest": LiveSet(keys.astype(np.int64), live.rep_row, {}, live.row_key).digest(),
                       "build_seconds": round(time.perf_counter() - start, 3), "last_sync": dict(last_sync),
                       "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            write_engine_section(index.path, section)
            index.meta["engine"] = section
            _remove_stale(index.path, section, STALE_PATTERNS)
            return section

        def journal(adding: np.ndarray, removing: np.ndarray) -> None:
            atomic_write_bytes(journal_path, json.dumps({"collection": collection, "adding": adding.tolist(),
                                                         "removing": removing.tolist()}).encode())

        if remove.size:
            journal(np.zeros(0, np.int64), remove)
            for a in range(0, remove.size, 1000):
                client.delete(collection, filter=f"video in [{', '.join(str(k) for k in remove[a:a + 1000])}]")
            client.flush(collection)
            committed = np.setdiff1d(committed, remove)
            groups.remove_keys(remove)
        section = commit(committed) if remove.size or not add.size else None
        checkpoint = int(options.get("checkpoint_videos", 20_000))
        with _bar(int(add.size), "milvus", progress) as bar:
            for a in range(0, int(add.size), checkpoint):
                chunk = add[a:a + checkpoint]
                journal(chunk, np.zeros(0, np.int64))
                redo = np.isin(chunk, upsert)
                for part, write in ((chunk[~redo], client.insert), (chunk[redo], client.upsert)):
                    if not part.size:
                        continue
                    for vecs, labels, keys in iter_frame_vectors(index.frame_embeds, weighted, _rows_for(live, part),
                                                                 part, chunk=BATCH_ROWS // 16):
                        keep = groups.absorb(vecs, labels, keys)
                        vecs, labels, keys = vecs[keep], labels[keep], keys[keep]
                        for b in range(0, len(labels), BATCH_ROWS):
                            write(collection, [{"id": int(i), "video": int(v), "vec": x} for i, v, x in
                                               zip(labels[b:b + BATCH_ROWS].tolist(), keys[b:b + BATCH_ROWS].tolist(),
                                                   vecs[b:b + BATCH_ROWS])])
                    bar.update(int(part.size))
                client.flush(collection)
                committed = np.union1d(committed, chunk)
                last_sync["added"] += int(chunk.size)
                section = commit(committed)
        journal_path.unlink(missing_ok=True)
        client.load_collection(collection)
        return section

    def fetch(self, unit_queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(1, min(depth, MAX_TOPK))
        ef = max(int(self.section["params"].get("ef_min", 128)), 2 * depth)
        res = self.client.search(self.collection, data=[q for q in np.asarray(unit_queries, np.float32)],
                                 limit=depth, anns_field="vec", output_fields=["video"],  # else it sends vectors
                                 search_params={"metric_type": "IP", "params": {"ef": ef}})
        cos = np.full((len(unit_queries), depth), -np.inf, np.float32)
        labels = np.full((len(unit_queries), depth), -1, np.int64)
        for i, hits in enumerate(res):
            n = len(hits)
            if n:
                labels[i, :n] = [h["id"] for h in hits]
                cos[i, :n] = [h["distance"] for h in hits]
        return cos, labels
