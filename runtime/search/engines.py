"""Search engines behind `ts2net index --engine` / `ts2net search`: scan, faiss, milvus.

Every engine returns the exact TS2-Net scores of the runtime (re-scored from the index's own
memory-mapped frame arrays, never from the engine's copy of the vectors); they differ in how they
find candidates:

* ``scan``: every video scored (the ground truth; no extra files).
* ``faiss``: an in-process frame-level index (unit frame vectors, inner product) persisted in the
  index directory as ``frames.<gen>.faiss`` + ``engine_keys.<gen>.npy`` (the content keys it
  holds). ``exact`` uses a flat index; otherwise flat up to :data:`FLAT_MAX_FRAMES` frames, HNSW
  up to :data:`HNSW_MAX_FRAMES` and IVF (float16 scalar quantizer) beyond; the parameters are
  recorded in ``index.json``.
* ``milvus``: one collection of frame vectors (primary key = frame label, ``video`` = content key)
  in Milvus Lite (a local file, the default) or a Milvus server/cluster (``--milvus-uri``).

The engine's state is recorded in ``index.json["engine"]`` (name, parameters, files, the digest of
the content keys it holds). ``index.json`` stays the commit point: engine files are written under
new generation names first, then ``index.json`` is switched, then stale files are removed. A
search refuses an engine whose key digest differs from the index's videos (a build interrupted
between the two commits), naming the command that brings it up to date.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..files import atomic_save_npy, atomic_write_bytes
from ..frame_similarity import _l2_normalize_last
from ..files import npz_bytes
from .frames import FRAME_BITS, FrameGroups, LiveSet, iter_frame_vectors, weighted_frames

log = logging.getLogger(__name__)

__all__ = ["ENGINE_NAMES", "EngineUnavailable", "EngineOutOfDate", "FrameEngine", "FaissEngine", "engine_class",
           "write_engine_section", "HNSW_MAX_FRAMES", "PIP_SEARCH"]

ENGINE_NAMES = ("scan", "faiss", "milvus")
PIP_SEARCH = "pip install 'ts2net-deploy[search]'"
# auto kind by frame count: brute force is a few ms up to FLAT_MAX_FRAMES; HNSW builds slowly (about
# 1k frames/s/core at 512 dims, measured) and keeps float32 vectors, so IVF-SQfp16 beyond HNSW_MAX_FRAMES
FLAT_MAX_FRAMES = 50_000
HNSW_MAX_FRAMES = 500_000
FLOAT32_COS_TOLERANCE = 1e-5    # engine cosine (float32 unit vectors) vs runtime's, incl. weighted-mean rounding
FLOAT16_COS_TOLERANCE = 2e-3    # |t . (e - fp16(e))| <= |e - fp16(e)| <= 2^-11 for unit t, e; plus the above


class EngineUnavailable(RuntimeError):
    """The engine's package is missing or its server cannot be reached (message says what to do)."""


class EngineOutOfDate(ValueError):
    """The engine holds another set of videos than the index (an interrupted `ts2net index`)."""


def _gen() -> str:
    return datetime.now().strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)


def write_engine_section(index_dir: Path, section: dict) -> dict:
    """Switch ``index.json["engine"]`` to ``section`` (one atomic replace; the commit point)."""
    from ..index import INDEX_FILE

    path = Path(index_dir) / INDEX_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["engine"] = section
    atomic_write_bytes(path, (json.dumps(meta, indent=1) + "\n").encode())
    return meta


class FrameEngine:
    """A frame-level candidate index over the weighted frames of an index's videos."""

    name = "?"
    max_depth = 1 << 16

    def __init__(self, index_dir: Path, section: dict):
        self.index_dir, self.section = Path(index_dir), section
        self.groups = load_groups(self.index_dir, section)

    # -- build side ------------------------------------------------------------------------------
    @classmethod
    def sync(cls, index, options: dict, *, progress: bool = True) -> dict:
        """Bring the engine to hold exactly the index's videos (adding, removing, resuming); commit."""
        raise NotImplementedError

    # -- search side -----------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.section["n_frames"])

    @property
    def cos_tolerance(self) -> float:
        return float(self.section["cos_tolerance"])

    def check_current(self, live: LiveSet) -> None:
        if self.section.get("keys_digest") != live.digest():
            raise EngineOutOfDate(
                f"{self.index_dir}: the {self.name} engine holds {self.section.get('n_keys', '?')} videos but the index "
                f"has {len(live.keys)} (an interrupted or engine-less `ts2net index` run?): re-run `ts2net index "
                f"--out {self.index_dir} --engine {self.name}` with the same --videos to bring it up to date")

    def fetch(self, unit_queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``depth`` frames per query: cosines ``[B, L]`` (decreasing) and labels (-1 = none)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _diff(committed: np.ndarray, live: LiveSet) -> tuple[np.ndarray, np.ndarray]:
    """(keys to add, keys to remove)."""
    return np.setdiff1d(live.keys, committed), np.setdiff1d(committed, live.keys)


def _weighted(index) -> np.ndarray:
    a = index.similarity_args
    return weighted_frames(index.frame_mask, a["frame_mask_mode"], a.get("tokens_per_frame", 4))


def _rows_for(live: LiveSet, keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(live.keys, keys)
    return live.rep_row[pos]


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not progress, leave=False)


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(f"the faiss engine needs the faiss package ({exc}): {PIP_SEARCH} "
                                "(or pip install faiss-cpu; faiss-gpu works the same)") from None
    return faiss


class FaissEngine(FrameEngine):
    """FAISS in process (see the module docstring for kinds, files and commits)."""

    name = "faiss"

    def __init__(self, index_dir: Path, section: dict):
        super().__init__(index_dir, section)
        faiss = _faiss()
        path = self.index_dir / section["file"]
        if not path.is_file():
            raise EngineOutOfDate(f"{self.index_dir}: {path.name} listed in index.json is missing (incomplete copy?); "
                                  f"re-run `ts2net index --out {self.index_dir} --engine faiss`")
        self.index = faiss.read_index(str(path))
        self.kind = section["kind"]
        self.max_depth = min(int(section["params"].get("max_depth", 1 << 16)), max(self.index.ntotal, 1))

    @staticmethod
    def choose(n_frames: int, dim: int, exact: bool, kind: str = "auto") -> dict:
        """Index kind and parameters for a collection size (recorded in index.json)."""
        if exact:
            kind = "flat"
        elif kind == "auto":
            kind = "flat" if n_frames <= FLAT_MAX_FRAMES else "hnsw" if n_frames <= HNSW_MAX_FRAMES else "ivf"
        if kind == "flat":
            return {"kind": "flat", "params": {"factory": "IDMap2,Flat", "max_depth": 1 << 16},
                    "cos_tolerance": FLOAT32_COS_TOLERANCE}
        if kind == "hnsw":
            return {"kind": "hnsw", "params": {"factory": "IDMap2,HNSW32,Flat", "M": 32, "efConstruction": 80,
                                               "efSearch_min": 128, "efSearch": "max(efSearch_min, 2 * depth)",
                                               "max_depth": 1 << 14},
                    "cos_tolerance": FLOAT32_COS_TOLERANCE}
        if kind == "ivf":
            nlist = int(max(64, min(65536, 2 * np.sqrt(max(n_frames, 1)))))
            return {"kind": "ivf", "params": {"factory": f"IVF{nlist},SQfp16 (own ids)", "nlist": nlist,
                                              # nlist/32: recall@10 0.990 at N=100k (nlist/64: 0.988, measured)
                                              "nprobe": max(16, nlist // 32),
                                              "nprobe_at_depth": "max(nprobe, 2 * depth * nlist / ntotal)",
                                              "train_size": min(n_frames, 32 * nlist), "kmeans_iterations": 10,
                                              "max_depth": 1 << 14},
                    "cos_tolerance": FLOAT16_COS_TOLERANCE}
        raise ValueError(f"faiss index kind must be auto, flat, hnsw or ivf, got {kind!r}")

    @classmethod
    def _new_index(cls, choice: dict, dim: int, train: Optional[np.ndarray]):
        faiss = _faiss()
        p = choice["params"]
        if choice["kind"] == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if choice["kind"] == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = p["efConstruction"]
            return faiss.IndexIDMap2(inner)
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFScalarQuantizer(quantizer, dim, p["nlist"], faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        inner.own_fields = True
        quantizer.this.disown()
        inner.cp.niter = int(p.get("kmeans_iterations", 10))
        inner.cp.max_points_per_centroid = max(1, len(train) // p["nlist"] + 1)
        inner.train(train)
        return inner      # IVF stores ids itself (an IDMap over it would renumber wrongly on remove_ids)

    @classmethod
    def sync(cls, index, options: dict, *, progress: bool = True) -> dict:
        faiss = _faiss()
        start = time.perf_counter()
        live = LiveSet.from_meta(index.meta)
        weighted = _weighted(index)
        dim = int(index.frame_embeds.shape[2])
        old = index.meta.get("engine") or {}
        exact = bool(options.get("exact", False))
        want_kind = options.get("faiss_kind", "auto")
        n_live_frames = int(weighted[live.rep_row].sum())
        reuse = (old.get("name") == cls.name and old.get("exact") == exact and old.get("dim") == dim
                 and want_kind in ("auto", old.get("kind")) and (index.path / old.get("file", "")).is_file()
                 and (index.path / old.get("keys_file", "")).is_file())
        dead = np.zeros(0, np.int64)
        if reuse:
            idx = faiss.read_index(str(index.path / old["file"]))
            committed = np.load(index.path / old["keys_file"])
            dead = np.load(index.path / old["dead_file"]) if old.get("dead_file") else dead
            groups = load_groups(index.path, old)
            choice = {"kind": old["kind"], "params": old["params"], "cos_tolerance": old["cos_tolerance"]}
            if choice["kind"] == "hnsw":              # HNSW cannot remove: deleted videos become tombstones
                gone = np.union1d(dead, np.setdiff1d(committed, live.keys))
                gone = np.setdiff1d(gone, live.keys)
                held = faiss.vector_to_array(idx.id_map) >> np.int64(FRAME_BITS)
                if np.isin(held, gone).sum() > 0.25 * max(idx.ntotal, 1):
                    log.info("faiss: over a quarter of the HNSW frames are deleted videos; rebuilding the graph")
                    reuse = False
        if not reuse:
            choice = cls.choose(n_live_frames, dim, exact, want_kind)
            if choice["kind"] == "ivf" and options.get("faiss_nprobe"):
                choice["params"]["nprobe"] = min(int(options["faiss_nprobe"]), choice["params"]["nlist"])
            train = None
            if choice["kind"] == "ivf":
                rng = np.random.default_rng(0)
                per_video = max(1.0, n_live_frames / max(len(live.keys), 1))
                sample = np.sort(rng.choice(len(live.keys), size=min(len(live.keys), int(
                    choice["params"]["train_size"] / per_video) + 1), replace=False))
                train = np.concatenate([v for v, _, _ in iter_frame_vectors(
                    index.frame_embeds, weighted, live.rep_row[sample], live.keys[sample])])
            idx = cls._new_index(choice, dim, train)
            committed, dead, groups = np.zeros(0, np.int64), np.zeros(0, np.int64), FrameGroups()
        add, remove = _diff(committed, live)
        resurrect = np.intersect1d(add, dead)          # tombstoned content that came back: frames still there
        add, dead = np.setdiff1d(add, resurrect), np.setdiff1d(dead, resurrect)
        if remove.size:
            if choice["kind"] == "hnsw":               # grouped frames stay too, for a resurrection
                dead = np.union1d(dead, remove)
            else:
                groups.remove_keys(remove)
                labels = ((remove[:, None] << np.int64(FRAME_BITS)) | np.arange(1 << FRAME_BITS)).ravel()
                idx.remove_ids(faiss.IDSelectorBatch(labels.size, faiss.swig_ptr(labels)))
        committed = np.union1d(np.setdiff1d(committed, remove), resurrect)
        checkpoint = int(options.get("checkpoint_videos", 50_000))
        section = None
        with _bar(int(add.size), f"faiss {choice['kind']}", progress) as bar:
            for a in range(0, max(int(add.size), 1), checkpoint):
                chunk = add[a:a + checkpoint]
                if chunk.size:
                    for vecs, labels, keys in iter_frame_vectors(index.frame_embeds, weighted, _rows_for(live, chunk),
                                                              chunk, chunk=2048):
                        keep = groups.absorb(vecs, labels, keys)
                        idx.add_with_ids(vecs[keep], labels[keep])
                    bar.update(int(chunk.size))
                    committed = np.union1d(committed, chunk)
                section = cls._commit(index, idx, choice, committed, dead, groups, exact, dim, live,
                                      time.perf_counter() - start,
                                      {"added": int(min(a + checkpoint, add.size)), "removed": int(remove.size),
                                       "tombstoned": choice["kind"] == "hnsw" and bool(remove.size),
                                       "fresh": not reuse})
        return section

    @classmethod
    def _commit(cls, index, idx, choice, committed, dead, groups, exact, dim, live, seconds, last_sync) -> dict:
        faiss = _faiss()
        gen = _gen()
        files = {"file": f"frames.{gen}.faiss", "keys_file": f"engine_keys.{gen}.npy"}
        tmp = index.path / f".{files['file']}.tmp"
        faiss.write_index(idx, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, index.path / files["file"])
        atomic_save_npy(index.path / files["keys_file"], committed.astype(np.int64))
        if dead.size:
            files["dead_file"] = f"engine_dead.{gen}.npy"
            atomic_save_npy(index.path / files["dead_file"], dead.astype(np.int64))
        files.update(save_groups(index.path, groups, gen))
        digest = LiveSet(np.asarray(committed, np.int64), live.rep_row, {}, live.row_key).digest()
        section = {"name": cls.name, "exact": exact, "dim": dim, "kind": choice["kind"], "params": choice["params"],
                   "cos_tolerance": choice["cos_tolerance"], **files, "n_keys": int(committed.size),
                   "n_frames": int(idx.ntotal), "dead_keys": int(dead.size), "keys_digest": digest,
                   "grouped_frames": len(groups), "groups": int(len(groups.vectors)),
                   "rescoring": "exact, from the index's frame_embeds/frame_mask arrays",
                   "build_seconds": round(seconds, 3), "last_sync": last_sync, "bytes": (index.path / files["file"]).stat().st_size,
                   "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_engine_section(index.path, section)
        index.meta["engine"] = section
        _remove_stale(index.path, section, STALE_PATTERNS)
        return section

    def fetch(self, unit_queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        depth = max(1, min(depth, self.index.ntotal))
        params = None
        p = self.section["params"]
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(int(p["efSearch_min"]), 2 * depth))
        elif self.kind == "ivf":   # probe enough lists to hold the depth asked for (deepening widens the probe)
            nlist = int(p["nlist"])
            want = int(np.ceil(2 * depth * nlist / max(self.index.ntotal, 1)))
            params = faiss.SearchParametersIVF(nprobe=min(nlist, max(int(p["nprobe"]), want)))
        # HNSW and IVF parallelise over queries: for one query an OpenMP team only adds barrier waits,
        # which on a loaded machine cost tens of ms (measured: HNSW fetch 30 ms -> 1 ms at 1000 videos).
        # omp_set_num_threads changes the calling thread's OpenMP setting only, so concurrent searches
        # in other threads are unaffected; it is restored before returning.
        single = len(unit_queries) == 1 and self.kind in ("hnsw", "ivf")
        threads = faiss.omp_get_max_threads()
        if single:
            faiss.omp_set_num_threads(1)
        try:
            cos, labels = self.index.search(np.ascontiguousarray(unit_queries, np.float32), depth, params=params)
        finally:
            if single:
                faiss.omp_set_num_threads(threads)
        return cos, labels


STALE_PATTERNS = ("frames.*.faiss", "engine_keys.*.npy", "engine_dead.*.npy", "engine_groups.*.npz")


def load_groups(root: Path, section: dict) -> FrameGroups:
    name = section.get("groups_file")
    return FrameGroups.load(root / name) if name else FrameGroups()


def save_groups(root: Path, groups: FrameGroups, gen: str) -> dict:
    if not len(groups):
        return {}
    name = f"engine_groups.{gen}.npz"
    atomic_write_bytes(root / name, npz_bytes(groups.arrays()))
    return {"groups_file": name}


def _remove_stale(root: Path, section: dict, patterns: tuple[str, ...]) -> None:
    keep = {v for k, v in section.items() if k.endswith("file") and isinstance(v, str)}
    for pattern in patterns:
        for stale in root.glob(pattern):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)


def engine_class(name: str):
    if name == "faiss":
        return FaissEngine
    if name == "milvus":
        from .milvus_engine import MilvusEngine

        return MilvusEngine
    raise ValueError(f"engine must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")


def unit(x: np.ndarray) -> np.ndarray:
    return _l2_normalize_last(np.array(x, np.float32, copy=True))
