"""Search engines (runtime.search): the bound, the threshold rule, faiss / Milvus Lite round trips.

The ground truth everywhere is an independent full scan: `runtime.similarity` over every video and
a stable sort by -score (ties by row order), which is what `ts2net search` always did.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtime.files import atomic_save_npy
from runtime.frame_similarity import effective_frame_mask, similarity
from runtime.index import open_index
from runtime.search import EngineOutOfDate, EngineUnavailable, Searcher, sync_engine
from runtime.search.frames import FRAME_BITS, LiveSet, iter_frame_vectors, key_of_sha256, weighted_frames
from runtime.search.synthetic import write_index_dir
from runtime.search.threshold import threshold_search

MODES = ("fixed", "official")


def sim_args(mode: str) -> dict:
    return {"logit_scale": 100.0, "frame_mask_mode": mode, "tokens_per_frame": 4, "softmax_factor": 4.0}


def sha(tag) -> str:
    return hashlib.sha256(str(tag).encode()).hexdigest()


def random_collection(rng, n: int, t: int = 6, d: int = 16, integer: bool = False):
    """Frames (some videos short, padding slots holding one fixed 'blank frame' vector) and masks."""
    if integer:   # entries +-1 (norm 4 for d=16): normalised frames and cosines are exact, so ties are exact
        fe = rng.choice(np.array([-1.0, 1.0], np.float32), (n, t, d))
    else:
        fe = rng.standard_normal((n, t, d)).astype(np.float32)
    length = rng.integers(1, t + 1, n)
    fm = (np.arange(t)[None] < length[:, None]).astype(np.uint8)
    fe[fm == 0] = fe[0, 0] if integer else fe[0, 0] * 0.5 + 0.25
    return fe, fm


def make_index(root: Path, fe: np.ndarray, fm: np.ndarray, shas: list[str], mode: str = "official",
               ids: list[str] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    for old in list(root.glob("frame_embeds.*.npy")) + list(root.glob("frame_mask.*.npy")):
        old.unlink()
    tag = sha(shas)[:8]
    atomic_save_npy(root / f"frame_embeds.{tag}.npy", fe.astype(np.float32))
    atomic_save_npy(root / f"frame_mask.{tag}.npy", fm.astype(np.uint8))
    previous = json.loads((root / "index.json").read_text())["engine"] if (root / "index.json").is_file() else None
    write_index_dir(root, f"frame_embeds.{tag}.npy", f"frame_mask.{tag}.npy", len(fe), fe.shape[1], fe.shape[2],
                    sim_args(mode), shas, ids or [f"v{i}" for i in range(len(fe))], source="test")
    if previous:   # what build_index does: the engine section survives a rebuild of the arrays
        meta = json.loads((root / "index.json").read_text())
        meta["engine"] = previous
        (root / "index.json").write_text(json.dumps(meta))
    return open_index(root)


def scan_top(text, fe, fm, mode, k):
    sim = similarity(text, fe, fm, **sim_args(mode))
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def assert_same_as_scan(hits, text, fe, fm, mode, k):
    """Same rows and scores as the scan. One video's score computed in differently shaped blocks
    differs by float32 rounding (numpy/BLAS reduction order, ~1e-6 on the x100 scale), so two
    videos whose scan scores are within 1e-4 may swap places; nothing else may differ."""
    sim = similarity(text, fe, fm, **sim_args(mode))
    rows, scores = scan_top(text, fe, fm, mode, k)
    for q, (h, r, s) in enumerate(zip(hits, rows, scores)):
        assert len(h.rows) == len(r)
        np.testing.assert_allclose(h.scores, s, rtol=1e-6, atol=1e-4)
        differ = h.rows != r
        np.testing.assert_allclose(sim[q, h.rows[differ]], sim[q, r[differ]], atol=1e-4)
        assert len(set(h.rows.tolist())) == len(h.rows)


# ------------------------------------------------------------------------------------ the bound

def independent_weights(text, frames, mask, mode):
    """w and s of the docs' formula, in float64, written out per video (no shared code)."""
    t = text / np.linalg.norm(text)
    norms = np.linalg.norm(frames, axis=-1, keepdims=True)
    e = frames / np.where(norms == 0, 1, norms)
    s = e @ t                                             # [N, T]
    T = mask.shape[1]
    m = mask if mode == "fixed" else mask[:, (4 * np.arange(T)) % T]
    u = s * m
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    u = np.where(m == 1, 4.0 * u, -1e18)
    w = np.exp(u - u.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True), s, m.astype(bool)


@pytest.mark.parametrize("mode", MODES)
def test_weights_sum_to_one_over_the_weighted_frames_and_score_never_exceeds_best_frame(mode):
    rng = np.random.default_rng(0)
    fe, fm = random_collection(rng, 400, t=12, d=32)
    texts = rng.standard_normal((20, 32))
    sim = similarity(texts.astype(np.float32), fe, fm, **sim_args(mode))
    eff = weighted_frames(fm, mode, 4)
    for q, text in enumerate(texts):
        w, s, m = independent_weights(text, fe.astype(np.float64), fm, mode)
        assert np.array_equal(m, eff)
        assert np.all(w[~m] == 0) and np.all(w >= 0)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(sim[q], 100 * (w * s).sum(axis=1), rtol=1e-4, atol=1e-4)
        best = np.where(m, s, -np.inf).max(axis=1)
        assert np.all(sim[q] <= 100 * best + 1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_bound_holds_for_adversarial_frames_only_over_the_frames_that_get_weight(mode):
    """Short videos whose padding slots point at the text and whose real frames point away."""
    d, T = 16, 12
    text = np.zeros((1, d), np.float32)
    text[0, 0] = 1.0
    fe = np.zeros((3, T, d), np.float32)
    fe[:, :, 1] = 1.0
    fe[:, :, 0] = -0.5                                    # real frames: cosine -0.447
    lengths = [1, 5, 11]
    fm = (np.arange(T)[None] < np.array(lengths)[:, None]).astype(np.uint8)
    fe[fm == 0] = text[0]                                 # padding: cosine 1
    fe[1, 3] = text[0]                                    # a real frame aligned with the text
    sim = similarity(text, fe, fm, **sim_args(mode))[0]
    cos = (fe / np.linalg.norm(fe, axis=-1, keepdims=True)) @ text[0]
    eff = effective_frame_mask(fm, mode, 4).astype(bool)
    best_weighted = np.where(eff, cos, -np.inf).max(axis=1)
    assert np.all(sim <= 100 * best_weighted + 1e-4)
    if mode == "official":
        # video 0 (1 real frame): official reads mask bits 0, 4, 8, 0, ... -> frames 3, 6, 9 get weight although
        # they are padding, so the score exceeds every *real* frame's cosine: a bound over the stored mask fails
        best_real = np.where(fm == 1, cos, -np.inf).max(axis=1)
        assert sim[0] > 100 * best_real[0] + 1.0
        # video 1: real frame 3 (cosine 1) is masked by the quirk (bit 4*3 % 12 = 0 is 1, so it *is* weighted);
        # frame 1 reads bit 4 (real) and frame 2 bit 8 (padding): check the index holds exactly `eff`
    rows = np.arange(3)
    got = {int(l) for _, labels, _ in iter_frame_vectors(fe, eff, rows, rows.astype(np.int64)) for l in labels}
    want = {(v << FRAME_BITS) | f for v, f in zip(*np.nonzero(eff))}
    assert got == want


def test_frame_vectors_are_unit_or_zero_and_keys_come_from_content():
    fe = np.zeros((2, 3, 4), np.float32)
    fe[0, 0] = [3, 4, 0, 0]
    fm = np.ones((2, 3), np.uint8)
    eff = weighted_frames(fm, "fixed", 4)
    vecs = np.concatenate([v for v, _, _ in iter_frame_vectors(fe, eff, np.arange(2), np.arange(2))])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), [1, 0, 0, 0, 0, 0])
    assert key_of_sha256("ab" * 32) == int("ab" * 6 + "a", 16)


# ------------------------------------------------------------------------- the threshold rule

def brute_force_fetch(fe, fm, mode, live: LiveSet):
    """An exact frame index written out here: every weighted frame, cosines sorted descending."""
    eff = weighted_frames(fm, mode, 4)
    vecs, labels = [], []
    for v, l, _ in iter_frame_vectors(fe, eff, live.rep_row, live.keys):
        vecs.append(v)
        labels.append(l)
    vecs, labels = np.concatenate(vecs), np.concatenate(labels)

    def fetch(q, depth):
        cos = q @ vecs.T
        order = np.argsort(-cos, axis=1, kind="stable")[:, :depth]
        return np.take_along_axis(cos, order, axis=1), labels[order]

    return fetch, len(labels)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("integer", [False, True])
def test_threshold_search_equals_scan_for_every_k_with_duplicates_and_ties(mode, integer, tmp_path):
    rng = np.random.default_rng(1 + integer)
    fe, fm = random_collection(rng, 40, t=6, d=16, integer=integer)
    fe[7], fm[7] = fe[3], fm[3]          # same content, other file: a distinct key, tied scores
    shas = [sha(i) for i in range(40)]
    shas[20] = shas[5]                   # byte-identical files: one key, two rows
    fe[20], fm[20] = fe[5], fm[5]
    index = make_index(tmp_path / "ix", fe, fm, shas, mode)
    live = LiveSet.from_meta(index.meta)
    assert len(live.keys) == 39 and live.rows_of[key_of_sha256(shas[5])] == [5, 20]
    fetch, n_frames = brute_force_fetch(fe, fm, mode, live)
    texts = rng.standard_normal((6, 16)).astype(np.float32)
    if integer:
        texts = np.sign(texts).astype(np.float32) + (texts == 0)
    for k in list(range(1, 43)) + [100]:
        for depth in (None, 1):          # depth 1: the deepening path (many fetches)
            hits = threshold_search(texts, fe, fm, sim_args(mode), live, fetch, k, cos_tolerance=1e-5,
                                    n_frames=n_frames, max_depth=n_frames, initial_depth=depth, group=3)
            assert_same_as_scan(hits, texts, fe, fm, mode, k)
            for h in hits:   # byte-identical files: one exact score, listed together in row order
                where = [i for i, r in enumerate(h.rows.tolist()) if r in (5, 20)]
                if len(where) == 2:
                    assert h.rows[where].tolist() == [5, 20] and where[1] == where[0] + 1
                    assert h.scores[where[0]] == h.scores[where[1]]
            assert all(h.stats.stop_rule_met and not h.stats.fallback for h in hits)
            if k <= 3 and depth is None:
                assert all(h.stats.rescored < 39 for h in hits)   # it did prune


def test_threshold_search_falls_back_to_a_full_rescore_past_max_depth(tmp_path):
    rng = np.random.default_rng(3)
    fe, fm = random_collection(rng, 30)
    index = make_index(tmp_path / "ix", fe, fm, [sha(i) for i in range(30)], "fixed")
    live = LiveSet.from_meta(index.meta)
    fetch, n = brute_force_fetch(fe, fm, "fixed", live)
    text = rng.standard_normal((4, 16)).astype(np.float32)
    hits = threshold_search(text, fe, fm, sim_args("fixed"), live, fetch, 10, cos_tolerance=1e-5, n_frames=n,
                            max_depth=2, initial_depth=1)
    assert_same_as_scan(hits, text, fe, fm, "fixed", 10)
    assert any(h.stats.fallback and not h.stats.stop_rule_met for h in hits)


# ---------------------------------------------------------------------------- engine round trips

def collection(seed, n, mode="official"):
    rng = np.random.default_rng(seed)
    fe, fm = random_collection(rng, n, t=8, d=16)
    return fe, fm, [sha((seed, i)) for i in range(n)], rng.standard_normal((5, 16)).astype(np.float32)


ENGINE_CASES = [("faiss", {"exact": True}), ("faiss", {"faiss_kind": "hnsw"}), ("faiss", {"faiss_kind": "ivf", "faiss_nprobe": 10**6}),
                ("milvus", {"exact": True}), ("milvus", {})]


@pytest.fixture(autouse=True)
def _close_milvus():
    yield
    from runtime.search.milvus_engine import close_all

    close_all()


def search_equals_scan(index, fe, fm, text, k=5):
    searcher = Searcher(index)
    hits = searcher.search(text, k)
    assert_same_as_scan(hits, text, fe, fm, index.meta["similarity"]["frame_mask_mode"], k)
    return hits


def n_weighted(fm, mode="official"):
    return int(weighted_frames(fm, mode, 4).sum())


@pytest.mark.parametrize("engine,options", ENGINE_CASES, ids=["faiss-exact", "faiss-hnsw", "faiss-ivf",
                                                              "milvus-exact", "milvus-hnsw"])
def test_engine_build_add_delete_change_and_search_equals_scan(engine, options, tmp_path):
    fe, fm, shas, text = collection(0, 60)
    root = tmp_path / "ix"
    index = make_index(root, fe, fm, shas)
    section = sync_engine(index, engine, progress=False, **options)
    meta = json.loads((root / "index.json").read_text())
    assert meta["engine"]["name"] == engine and meta["engine"]["exact"] == bool(options.get("exact"))
    assert section["n_frames"] + section["grouped_frames"] == n_weighted(fm) and section["last_sync"]["fresh"]
    assert section["groups"] == 1 and section["grouped_frames"] > 20    # the shared padding vector
    search_equals_scan(open_index(root), fe, fm, text)

    # add 20 videos (rows reordered), delete 10, change 1 (same id, new bytes)
    fe2, fm2, shas2, _ = collection(1, 20)
    keep = list(range(10, 60))
    fe3 = np.concatenate([fe2, fe[keep]])
    fm3 = np.concatenate([fm2, fm[keep]])
    shas3 = shas2 + [shas[i] for i in keep]
    fe3[30] = fe3[30][::-1].copy()
    shas3[30] = sha("changed")
    index = make_index(root, fe3, fm3, shas3)
    with pytest.raises(EngineOutOfDate, match="re-run `ts2net index"):
        Searcher(index)
    section = sync_engine(index, engine, progress=False, **options)
    assert not section["last_sync"]["fresh"]
    assert section["last_sync"]["added"] == 21 and section["last_sync"]["removed"] == 11
    if not (engine == "faiss" and section["kind"] == "hnsw"):
        assert section["n_frames"] + section["grouped_frames"] == n_weighted(fm3)   # removed, no duplicates
    else:
        assert section["dead_keys"] == 11                     # HNSW: tombstones, skipped at search
    search_equals_scan(open_index(root), fe3, fm3, text)
    # a deleted video that comes back is found again (HNSW: its tombstone is lifted)
    index = make_index(root, np.concatenate([fe3, fe[:1]]), np.concatenate([fm3, fm[:1]]), shas3 + shas[:1])
    sync_engine(index, engine, progress=False, **options)
    search_equals_scan(open_index(root), np.concatenate([fe3, fe[:1]]), np.concatenate([fm3, fm[:1]]), text, k=70)


@pytest.mark.parametrize("engine", ["faiss", "milvus"])
def test_interrupted_build_resumes_without_duplicates(engine, tmp_path, monkeypatch):
    fe, fm, shas, text = collection(2, 90)
    root = tmp_path / "ix"
    index = make_index(root, fe, fm, shas)
    import runtime.search.engines as engines_module
    import runtime.search.milvus_engine as milvus_module

    calls = {"n": 0}
    real = engines_module.write_engine_section

    def crash_after_first_checkpoint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(engines_module, "write_engine_section", crash_after_first_checkpoint)
    monkeypatch.setattr(milvus_module, "write_engine_section", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        sync_engine(index, engine, exact=True, progress=False, checkpoint_videos=30)
    monkeypatch.setattr(engines_module, "write_engine_section", real)
    monkeypatch.setattr(milvus_module, "write_engine_section", real)
    partial = json.loads((root / "index.json").read_text())["engine"]
    assert partial["name"] == engine and partial["n_keys"] == 30          # the first checkpoint committed
    if engine == "milvus":
        assert (root / "milvus_journal.json").is_file()                    # the second chunk may be half written
    with pytest.raises(EngineOutOfDate):
        Searcher(open_index(root))
    section = sync_engine(open_index(root), engine, exact=True, progress=False, checkpoint_videos=30)
    assert section["n_keys"] == 90 and section["n_frames"] + section["grouped_frames"] == n_weighted(fm)
    assert section["last_sync"]["added"] == 60 and not section["last_sync"]["fresh"]
    if engine == "milvus":
        assert not (root / "milvus_journal.json").exists() and section["last_sync"]["upserted_after_interruption"] == 30
    else:
        import faiss

        stored = faiss.read_index(str(root / section["file"]))
        held = faiss.vector_to_array(stored.id_map)
        assert len(np.unique(held)) == len(held) == n_weighted(fm) - section["grouped_frames"]
    search_equals_scan(open_index(root), fe, fm, text)
    leftovers = sorted(p.name for p in root.glob("engine_keys.*.npy"))
    assert leftovers == [section["keys_file"]]


def test_concurrent_searches_equal_serial(tmp_path):
    fe, fm, shas, _ = collection(4, 200)
    index = make_index(tmp_path / "ix", fe, fm, shas)
    sync_engine(index, "faiss", faiss_kind="hnsw", progress=False)
    searcher = Searcher(open_index(tmp_path / "ix"))
    texts = np.random.default_rng(5).standard_normal((24, 16)).astype(np.float32)
    serial = [searcher.search(t[None], 7)[0] for t in texts]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(lambda t: searcher.search(t[None], 7)[0], texts))
    for a, b in zip(serial, parallel):
        assert a.rows.tolist() == b.rows.tolist() and np.array_equal(a.scores, b.scores)


# ------------------------------------------------------------------------------- errors, metadata

def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    fe, fm, shas, _ = collection(6, 10)
    index = make_index(tmp_path / "ix", fe, fm, shas)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(EngineUnavailable, match=r"pip install 'ts2net-deploy\[search\]'"):
        sync_engine(index, "faiss", progress=False)
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(EngineUnavailable, match=r"pip install 'ts2net-deploy\[search\]'"):
        sync_engine(index, "milvus", progress=False)


def test_unreachable_milvus_uri_is_a_clear_error(tmp_path, monkeypatch):
    fe, fm, shas, _ = collection(7, 10)
    index = make_index(tmp_path / "ix", fe, fm, shas)
    monkeypatch.setenv("TS2NET_MILVUS_TIMEOUT", "1")
    with pytest.raises(EngineUnavailable, match=r"cannot reach Milvus at http://127\.0\.0\.1:9.*--milvus-uri"):
        sync_engine(index, "milvus", milvus_uri="http://127.0.0.1:9", progress=False)
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["engine"] == {"name": "scan"}


def test_scan_engine_is_recorded_and_is_the_default(tmp_path):
    fe, fm, shas, text = collection(8, 12)
    index = make_index(tmp_path / "ix", fe, fm, shas)
    assert Searcher(index).name == "scan"
    sync_engine(index, "faiss", exact=True, progress=False)
    section = sync_engine(open_index(tmp_path / "ix"), "scan", progress=False)
    assert section == {"name": "scan", "exact": True, "rescoring": "every video, from the index's arrays",
                       "replaced": "faiss"}
    hits = search_equals_scan(open_index(tmp_path / "ix"), fe, fm, text)
    assert all(h.stats.rescored == 12 for h in hits)


# ------------------------------------------------------------------------------ the command line

def test_cli_index_with_engine_then_search_equals_scan(tmp_path, bundle_dir, colour_clips):
    from click.testing import CliRunner

    from cli.main import main
    from retrieval_data import caption

    bundle, videos = bundle_dir, tmp_path / "videos"
    shutil.copytree(colour_clips, videos)
    out = tmp_path / "index"
    runner = CliRunner()
    args = ["index", "--bundle", str(bundle), "--videos", str(videos), "--out", str(out), "--cache",
            str(tmp_path / "cache"), "--no-progress"]
    result = runner.invoke(main, args + ["--engine", "faiss", "--exact"])
    assert result.exit_code == 0, result.output
    assert "engine faiss (flat, exact)" in result.output
    meta = json.loads((out / "index.json").read_text())
    assert meta["engine"]["name"] == "faiss" and meta["engine"]["exact"] is True
    queries = [caption(1), caption(4), "a dark screen"]
    hits = json.loads(runner.invoke(main, ["search", str(out), *queries, "-k", "4", "--json"]).output)
    scan = json.loads(runner.invoke(main, ["search", str(out), *queries, "-k", "4", "--json", "--engine", "scan"]).output)
    for h, s in zip(hits, scan):
        assert h["engine"] == "faiss" and s["engine"] == "scan" and h["stop_rule_met"]
        assert [r["video_id"] for r in h["results"]] == [r["video_id"] for r in s["results"]]
        np.testing.assert_allclose([r["score"] for r in h["results"]], [r["score"] for r in s["results"]], atol=1e-4)
    text = runner.invoke(main, ["search", str(out), queries[0], "-k", "2"]).output
    assert "[faiss:" in text.splitlines()[0] and "stop rule met" in text
    # re-running without --engine keeps the recorded engine; a new file is appended, not rebuilt
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "index.json").read_text())["engine"]["last_sync"]["fresh"] is False
    # an unreachable Milvus server: one clear line, the index stays usable
    result = runner.invoke(main, args + ["--engine", "milvus", "--milvus-uri", "http://127.0.0.1:9"],
                           env={"TS2NET_MILVUS_TIMEOUT": "1"})
    assert result.exit_code != 0 and "cannot reach Milvus at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_engine_sync_holds_the_index_build_lock(tmp_path):
    from runtime.files import directory_lock
    from runtime.index import LOCK_FILE, VideoIndexError

    fe, fm, shas, _ = collection(9, 10)
    index = make_index(tmp_path / "ix", fe, fm, shas)
    with directory_lock(tmp_path / "ix", "ts2net index", LOCK_FILE):
        with pytest.raises(VideoIndexError, match="another `ts2net index` holds the lock"):
            sync_engine(index, "faiss", progress=False)
    assert sync_engine(index, "faiss", progress=False)["name"] == "faiss"
