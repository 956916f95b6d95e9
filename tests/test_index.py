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
    # one generation of arrays remains
    assert sorted(p.name for p in index_dir.iterdir()) == sorted(["index.json", *meta["arrays"].values()])
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
