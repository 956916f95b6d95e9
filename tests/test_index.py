"""`ts2net index` / `ts2net search`: build, search, resume, and refuse a foreign bundle.

Shares the session's tiny bundle and clips with test_eval.py. The model is random, so "the right
top-1" is the video with the highest score in an independently computed similarity row.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from runtime.index import VideoIndexError, build_index, open_index, search_index
from retrieval_data import EncoderSpy, caption, independent_similarity, write_clip


@pytest.fixture()
def videos(tmp_path, colour_clips) -> Path:
    folder = tmp_path / "videos"
    shutil.copytree(colour_clips, folder)
    return folder


def test_index_then_search_returns_the_top_video(bundle_dir, videos, tmp_path):
    index_dir, cache = tmp_path / "index", tmp_path / "cache"
    runner = CliRunner()
    result = runner.invoke(main, ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out",
                                  str(index_dir), "--cache", str(cache), "--dtype", "float32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "indexed 6 videos" in result.output and "6 encoded" in result.output

    meta = json.loads((index_dir / "index.json").read_text())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert meta["similarity"]["logit_scale"] == manifest["similarity"]["logit_scale"]
    assert meta["bundle"]["path"] == str(bundle_dir.resolve())
    assert [v["id"] for v in meta["videos"]] == [f"video{i}" for i in range(6)]
    assert [v["frames"] for v in meta["videos"]] == [1, 2, 3, 4, 5, 5]

    queries = [caption(2), "a dark screen"]
    sim = independent_similarity(bundle_dir, queries, [videos / f"video{i}.mp4" for i in range(6)])
    result = runner.invoke(main, ["search", str(index_dir), *queries, "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    for row, entry in zip(sim, hits):
        order = np.argsort(-row, kind="stable")[:3]
        assert [h["video_id"] for h in entry["results"]] == [f"video{i}" for i in order]
        np.testing.assert_allclose([h["score"] for h in entry["results"]], row[order], rtol=1e-5, atol=1e-5)
        assert entry["results"][0]["path"] == str((videos / f"video{order[0]}.mp4").resolve())

    # human-readable output: the top video on the first result line
    result = runner.invoke(main, ["search", str(index_dir), caption(2), "-k", "2", "--bundle", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"query: {caption(2)}" and f"video{np.argmax(sim[0])}" in lines[1] and len(lines) == 3

    # the default float16 storage ranks the same here and halves the arrays
    small = build_index(bundle_dir, videos, tmp_path / "index16", cache_dir=cache, progress=False)
    assert small["dtype"] == "float16" and small["build"]["from_cache"] == 6
    top = search_index(open_index(tmp_path / "index16"), queries, k=1)
    assert [t["results"][0]["video_id"] for t in top] == [f"video{np.argmax(r)}" for r in sim]
    np.testing.assert_allclose([t["results"][0]["score"] for t in top], sim.max(axis=1), atol=0.05)


# The life of one index, one phase per test: each test replays the phases before it (helpers, no
# asserts) so a failure in one phase never hides the checks of the next.
def _hold_back(videos: Path, tmp_path: Path) -> Path:
    """Move video4/5 aside, to be added later."""
    held_back = tmp_path / "later"
    held_back.mkdir()
    for name in ("video4.mp4", "video5.mp4"):
        (videos / name).rename(held_back / name)
    return held_back


def _interrupted_build(bundle_dir, videos, index_dir, cache, monkeypatch) -> None:
    """A first build whose second chunk (video2/3) is interrupted; chunk 1 (video0/1) reached the cache."""
    from runtime.encoder import BundleEncoder

    wrapped = BundleEncoder.encode_video_files
    calls = []

    def interrupted(self, paths, *args, **kwargs):
        calls.append(paths)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return wrapped(self, paths, *args, **kwargs)

    monkeypatch.setattr(BundleEncoder, "encode_video_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(bundle_dir, videos, index_dir, cache_dir=cache, progress=False, chunk_size=2)
    monkeypatch.setattr(BundleEncoder, "encode_video_files", wrapped)


def _four_video_index(bundle_dir, videos, tmp_path, monkeypatch):
    """Phases 1-2: interrupted, then resumed; (index dir, held-back folder, resumed build's metadata)."""
    index_dir, cache = tmp_path / "index", tmp_path / "cache"
    held_back = _hold_back(videos, tmp_path)
    _interrupted_build(bundle_dir, videos, index_dir, cache, monkeypatch)
    return index_dir, held_back, build_index(bundle_dir, videos, index_dir, cache_dir=cache, progress=False,
                                             chunk_size=2)


def _six_video_index(bundle_dir, videos, tmp_path, monkeypatch) -> Path:
    """Phases 1-3: the four-video index, then video4/5 added."""
    index_dir, held_back, _ = _four_video_index(bundle_dir, videos, tmp_path, monkeypatch)
    for name in ("video4.mp4", "video5.mp4"):
        (held_back / name).rename(videos / name)
    build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    return index_dir


def test_interrupted_index_build_commits_nothing(bundle_dir, videos, tmp_path, monkeypatch):
    _hold_back(videos, tmp_path)
    _interrupted_build(bundle_dir, videos, tmp_path / "index", tmp_path / "cache", monkeypatch)
    assert not (tmp_path / "index" / "index.json").exists()


def test_resumed_index_build_encodes_only_what_the_cache_lacks(bundle_dir, videos, tmp_path, monkeypatch):
    index_dir, cache = tmp_path / "index", tmp_path / "cache"
    _hold_back(videos, tmp_path)
    _interrupted_build(bundle_dir, videos, index_dir, cache, monkeypatch)
    spy = EncoderSpy(monkeypatch)
    meta = build_index(bundle_dir, videos, index_dir, cache_dir=cache, progress=False, chunk_size=2)
    assert spy.videos == ["video2.mp4", "video3.mp4"]  # video0/1 came from the cache
    assert (meta["n_videos"], meta["build"]["from_cache"], meta["build"]["encoded"]) == (4, 2, 2)


def test_new_videos_are_encoded_and_the_others_reused_from_the_index(bundle_dir, videos, tmp_path, monkeypatch):
    index_dir, held_back, _ = _four_video_index(bundle_dir, videos, tmp_path, monkeypatch)
    for name in ("video4.mp4", "video5.mp4"):
        (held_back / name).rename(videos / name)
    spy = EncoderSpy(monkeypatch)
    meta = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)  # no cache: from the index
    assert spy.videos == ["video4.mp4", "video5.mp4"]
    assert (meta["n_videos"], meta["build"]["reused_from_index"]) == (6, 4)


def test_changed_video_is_reencoded_and_a_removed_one_leaves_the_index(bundle_dir, videos, tmp_path, monkeypatch):
    index_dir = _six_video_index(bundle_dir, videos, tmp_path, monkeypatch)
    write_clip(videos / "video1.mp4", (0, 128, 128), 3.0)
    (videos / "video0.mp4").unlink()
    spy = EncoderSpy(monkeypatch)
    meta = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    assert spy.videos == ["video1.mp4"]
    assert [v["id"] for v in meta["videos"]] == [f"video{i}" for i in range(1, 6)]
    # one generation of arrays remains (and the build lock file)
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([".index.lock", "index.json",
                                                                  *meta["arrays"].values()])
    index = open_index(index_dir)
    assert index.frame_embeds.shape[:2] == (5, 12) and index.frame_embeds.dtype == np.float16
    sim = independent_similarity(bundle_dir, ["x"], [videos / "video1.mp4"])
    scores = {r["video_id"]: r["score"] for r in search_index(index, ["x"], k=5)[0]["results"]}
    assert scores["video1"] == pytest.approx(float(sim[0, 0]), abs=0.05)  # the new clip's embedding


def test_index_skip_bad_and_foreign_bundle(bundle_dir, videos, tmp_path):
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    runner = CliRunner()
    args = ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out", str(tmp_path / "i"),
            "--no-cache", "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "broken.mp4" in result.output
    result = runner.invoke(main, args + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert meta["n_videos"] == 6 and [s["video_id"] for s in meta["skipped"]] == ["broken"]

    meta["bundle"]["id"] = "0123456789abcdef"
    (tmp_path / "i" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(VideoIndexError, match="built with bundle id 0123456789abcdef"):
        search_index(open_index(tmp_path / "i"), ["anything"])
    result = runner.invoke(main, ["search", str(tmp_path / "i"), "anything"])
    assert result.exit_code != 0 and "not comparable" in result.output


def test_new_decoding_or_preprocessing_code_reencodes_instead_of_serving_old_embeddings(
        bundle_dir, videos, tmp_path, monkeypatch):
    """Index and embedding cache are keyed by the preprocessing identity (rules + PyAV/FFmpeg/Pillow)."""
    import PIL

    from runtime import video as rv

    spy = EncoderSpy(monkeypatch)
    index_dir, cache = tmp_path / "index", tmp_path / "cache"
    first = build_index(bundle_dir, videos, index_dir, cache_dir=cache, progress=False)
    assert first["build"]["encoded"] == 6
    assert first["preprocessing"] == rv.preprocessing_identity()

    # another Pillow (or PyAV / FFmpeg): neither the index nor the cache may answer
    monkeypatch.setattr(PIL, "__version__", "0.0.test")
    spy.reset()
    meta = build_index(bundle_dir, videos, index_dir, cache_dir=cache, progress=False)
    assert (meta["build"]["encoded"], meta["build"]["from_cache"], meta["build"]["reused_from_index"]) == (6, 0, 0)
    assert len(spy.videos) == 6 and meta["preprocessing"]["pillow"] == "0.0.test"
    other = build_index(bundle_dir, videos, tmp_path / "index2", cache_dir=cache, progress=False)
    assert other["build"]["from_cache"] == 6  # the cache now holds entries for the new identity too

    # a new version of our own rules (like the crop fix) does the same
    monkeypatch.setattr(rv, "PREPROCESSING_RULES_VERSION", rv.PREPROCESSING_RULES_VERSION + 1)
    meta = build_index(bundle_dir, videos, tmp_path / "index3", cache_dir=cache, progress=False)
    assert (meta["build"]["encoded"], meta["build"]["from_cache"]) == (6, 0)


def test_search_refuses_non_finite_scores_naming_the_videos(bundle_dir, videos, tmp_path):
    index_dir = tmp_path / "index"
    build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False, dtype="float32")
    meta = json.loads((index_dir / "index.json").read_text())
    embeds = np.load(index_dir / meta["arrays"]["frame_embeds"], mmap_mode="r+")
    embeds[3, 0, 0] = np.nan                                     # one corrupt value in video3
    embeds.flush()
    del embeds
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(main, ["search", str(index_dir), caption(2), *extra])
        assert result.exit_code == 1, result.output
        assert "the frame embeddings of 'video3' are non-finite (stored in the index" in result.output
        assert "NaN," not in result.output and "Traceback" not in result.output



def test_a_second_build_on_the_same_out_is_locked_out(bundle_dir, videos, tmp_path):
    import fcntl

    index_dir = tmp_path / "index"
    good = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    with open(index_dir / ".index.lock", "a+b") as held:        # another build in progress
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(VideoIndexError, match=f"another `ts2net index` holds the lock on {index_dir}"):
            build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
        result = CliRunner().invoke(main, ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out",
                                           str(index_dir), "--no-cache", "--no-progress"])
        assert result.exit_code == 1 and "another `ts2net index` holds the lock" in result.output
    assert open_index(index_dir).meta["arrays"] == good["arrays"]   # untouched, still whole
    build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)  # released: builds again


def test_a_build_deletes_only_the_generation_it_replaced(bundle_dir, videos, tmp_path):
    index_dir = tmp_path / "index"
    first = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    # arrays some other writer left (or is writing) that this build did not supersede
    foreign = [index_dir / "frame_embeds.other-gen.npy", index_dir / "frame_mask.other-gen.npy"]
    for path in foreign:
        path.write_bytes(b"not ours")
    second = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    assert all(path.exists() for path in foreign)
    assert not any((index_dir / name).exists() for name in first["arrays"].values())
    assert all((index_dir / name).exists() for name in second["arrays"].values())


def test_non_videos_and_broken_entries_are_refused_or_listed_with_their_reason(bundle_dir, videos, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (250, 10, 10)).save(videos / "photo.mp4", format="PNG")
    Image.new("RGB", (64, 48), (10, 250, 10)).save(videos / "snap.mp4", format="JPEG")
    (videos / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (videos / "loop.mp4").symlink_to(videos / "loop.mp4")
    (videos / "folder.mp4").mkdir()
    args = ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out", str(tmp_path / "i"),
            "--no-cache", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "pass --skip-bad" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, args + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert [v["id"] for v in meta["videos"]] == [f"video{i}" for i in range(6)]
    reasons = {Path(s["path"]).name: s["reason"] for s in meta["skipped"]}
    assert reasons["dangling.mp4"].startswith("broken symbolic link")
    assert reasons["loop.mp4"] == "symbolic link loop"
    assert reasons["folder.mp4"] == "a directory, not a video file"
    assert "a still image (png), not a video" in reasons["photo.mp4"]
    assert "a still image (mjpeg), not a video" in reasons["snap.mp4"]
    for name in reasons:
        assert f"skipped {videos / name}: " in result.output


def test_damaged_index_files_are_one_line_errors_naming_the_file(bundle_dir, videos, tmp_path):
    index_dir = tmp_path / "index"
    meta = build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    good = (index_dir / "index.json").read_text()
    runner = CliRunner()

    broken = json.loads(good)
    del broken["arrays"]
    (index_dir / "index.json").write_text(json.dumps(broken))
    result = runner.invoke(main, ["search", str(index_dir), "x"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (f"Error: {index_dir / 'index.json'}: missing or malformed arrays (dict), "
                                     "arrays.frame_embeds (file name), arrays.frame_mask (file name); the file is "
                                     f"damaged or hand-edited: rebuild it with `ts2net index --out {index_dir}`")

    (index_dir / "index.json").write_text(good)
    embeds = index_dir / meta["arrays"]["frame_embeds"]
    embeds.write_bytes(embeds.read_bytes()[:-100])            # a truncated copy
    result = runner.invoke(main, ["search", str(index_dir), "x"])
    assert result.exit_code == 1 and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert f"Error: {embeds}: not a complete .npy array" in result.output and "rebuild it with" in result.output



def test_search_refuses_empty_queries_warns_on_wordless_ones_and_shortens_echoes(bundle_dir, videos, tmp_path):
    index_dir = tmp_path / "index"
    build_index(bundle_dir, videos, index_dir, cache_dir=False, progress=False)
    runner = CliRunner()
    for empty in ("", "   "):
        result = runner.invoke(main, ["search", str(index_dir), "a red circle", empty])
        assert result.exit_code == 1 and "Error: query 2 is empty: give the text to search for" in result.output
    result = runner.invoke(main, ["search", str(index_dir), "!!!???", "-k", "2"])
    assert result.exit_code == 0
    assert "warning: query 1: '!!!???' has no word (only punctuation or symbols)" in result.output
    long_query = "a red circle " * 10_000                       # 130,000 characters
    result = runner.invoke(main, ["search", str(index_dir), long_query, "-k", "1"])
    assert result.exit_code == 0 and len(result.output) < 1000
    assert f"... ({len(long_query)} characters)" in result.output


def test_an_int8_index_encodes_its_queries_with_the_fp32_text_graph(bundle_dir, colour_clips, tmp_path):
    """The video embeddings are INT8-graph outputs; the query text graph is FP32 (nothing recorded a
    passing both-graphs INT8 run), so a query's embedding equals the FP32 graph's and its scores are the
    exact similarity against the stored INT8 frames."""
    from runtime.bundle import open_bundle
    from runtime.encoder import BundleEncoder
    from runtime.frame_similarity import similarity

    if not open_bundle(bundle_dir).has_graph("video", "int8"):
        pytest.skip("the tiny bundle has no INT8 graphs")
    index = build_index(bundle_dir, colour_clips, tmp_path / "i8", backend="ort-cpu", precision="int8",
                        dtype="float32", cache_dir=False, progress=False)
    assert index["precision"] == "int8"
    opened = open_index(tmp_path / "i8")
    found = search_index(opened, ["a red clip"], k=6, backend="ort-cpu", engine="scan")[0]
    assert found["query_encoder"] == {"backend": "ort-cpu", "precision": "fp32"}
    bundle = open_bundle(bundle_dir)
    with BundleEncoder(bundle, "ort-cpu", "fp32") as fp32:
        text = fp32.encode_texts(["a red clip"])
    sim = similarity(text, np.asarray(opened.frame_embeds, np.float32), np.asarray(opened.frame_mask),
                     **bundle.similarity_args)[0]
    np.testing.assert_allclose(sorted((h["score"] for h in found["results"]), reverse=True),
                               np.sort(sim)[::-1], rtol=1e-5, atol=1e-5)
