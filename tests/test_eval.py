"""`ts2net eval`, the annotation readers and the embedding cache, end to end on a tiny bundle.

The bundle is the fixed-seed tiny model exported once per session; the videos are a few tiny
MPEG-4 clips of different colours and lengths written with PyAV. The model is random, so the
tests never assume a caption finds "its" video: every reported number is checked against
metrics recomputed here from an independently computed similarity matrix (encoder + the
public `runtime.similarity` / `runtime.metrics` functions, none of the eval code).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval_data import EncoderSpy, caption, independent_similarity, write_1ka_csv, write_clip
from runtime import dsl_rescale, retrieval_metrics
from runtime.datasets import AnnotationError, load_retrieval_set, read_annotations, read_subsets
from runtime.metrics import metrics_from_ranks, ranks, v2t_metrics, v2t_ranks
from runtime.video import VideoDecodeError

METRIC_KEYS = ("R1", "R5", "R10", "R50", "MdR", "MnR", "n_queries")


def assert_metrics_equal(reported: dict, expected: dict):
    for key in METRIC_KEYS:
        assert reported[key] == pytest.approx(expected[key], abs=1e-9), key


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def videos_dir(colour_clips) -> Path:
    return colour_clips


@pytest.fixture()
def dataset(tmp_path, videos_dir):
    """A private copy of the clips with a 1k-A CSV beside it (tests may modify both)."""
    root = tmp_path / "data"
    shutil.copytree(videos_dir, root / "videos")
    csv_path = write_1ka_csv(root / "MSRVTT_JSFUSION_test.csv")
    return root, csv_path, root / "videos"


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------

def test_1ka_csv_and_multi_caption_jsonl_are_read(dataset):
    root, csv_path, videos = dataset
    rs = load_retrieval_set(csv_path, videos)
    assert rs.format == "msrvtt-1ka"
    assert rs.video_ids == [f"video{i}" for i in range(6)]
    assert rs.texts == [caption(i) for i in range(6)]
    np.testing.assert_array_equal(rs.caption_video, np.arange(6))
    assert rs.paths()[2] == videos / "video2.mp4"

    jsonl = root / "captions.jsonl"
    lines = [{"video_id": "video1", "caption": "first"}, {"video_id": "video0", "caption": "second"},
             {"video_id": "video1", "sentence": "third"}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rs = load_retrieval_set(jsonl, videos)
    assert (rs.format, rs.video_ids, rs.texts) == ("jsonl", ["video1", "video0"], ["first", "second", "third"])
    np.testing.assert_array_equal(rs.caption_video, [0, 1, 0])

    generic = root / "generic.csv"
    generic.write_text("video_id,caption\nvideo3,one\nvideo3,\"two, with a comma\"\n")
    (videos / "video3.mp4").rename(videos / "video3.webm")  # other extensions are found too
    rs = load_retrieval_set(generic, videos)
    assert rs.format == "csv" and rs.texts == ["one", "two, with a comma"]
    assert rs.video_paths["video3"].name == "video3.webm"


def test_annotation_errors_name_file_line_and_column(dataset):
    root, _, videos = dataset
    bad = root / "bad.csv"
    bad.write_text("key,video_id,text\nret0,video0,hello\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv: missing caption column: expected 'caption' or 'sentence'"):
        read_annotations(bad)
    bad.write_text("key,vid,sentence\nret0,video0,hello\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv: missing column 'video_id'"):
        read_annotations(bad)
    bad.write_text("video_id,sentence\nvideo0,hello\nvideo1,   \n")
    with pytest.raises(AnnotationError, match=r"bad\.csv: line 3: column 'sentence' is empty"):
        read_annotations(bad)
    bad.write_text("video_id,sentence\nvideo0,hello\nnope,where is it\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv: line 3: video_id 'nope' has no video file in "):
        load_retrieval_set(bad, videos)
    jsonl = root / "bad.jsonl"
    jsonl.write_text('{"video_id": "video0", "caption": "ok"}\n{"video_id": "video1"\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl: line 2: not valid JSON"):
        read_annotations(jsonl)
    jsonl.write_text('{"video_id": "video0", "text": "no caption key"}\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl: line 1: missing key 'caption'"):
        read_annotations(jsonl)
    subsets = root / "subsets.json"
    subsets.write_text('{"motion": ["video0", 3]}')
    with pytest.raises(AnnotationError, match=r"subsets\.json: key 'motion' must be a list of video id strings"):
        read_subsets(subsets, ["video0"])


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------

def test_eval_end_to_end_matches_independent_metrics(bundle_dir, dataset, tmp_path):
    from runtime.evaluation import evaluate

    root, csv_path, videos = dataset
    (root / "subsets.json").write_text(json.dumps({
        "motion": ["video0", "video1", "train_only_video"], "small_object": ["video4"], "empty": ["elsewhere"],
        "pairs": {"video0": "video1", "video1": "video0", "video4": "train_only_video"},
        "pair_change": {"video0": "direction"}}))
    out = tmp_path / "reports"
    data = evaluate(bundle_dir, csv_path, videos, out_dir=out, cache_dir=tmp_path / "cache", progress=False)

    # the files: JSON with every number, Markdown summary, recall PNG
    json_path, md_path = Path(data["files"]["json"]), Path(data["files"]["markdown"])
    assert json_path.parent == out and md_path.suffix == ".md"
    assert Path(data["files"]["recall_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(json_path.read_text())
    assert report["environment"]["libraries"]["onnxruntime"]
    assert report["skipped_videos"] == [] and report["removed_queries"] == []
    for step in ("encode_texts", "encode_videos", "similarity", "total"):
        assert report["timing_seconds"][step] >= 0

    sim = independent_similarity(bundle_dir, [caption(i) for i in range(6)], [videos / f"video{i}.mp4" for i in range(6)])
    expected = {"t2v": retrieval_metrics(sim), "v2t": retrieval_metrics(sim.T),
                "t2v_dsl": retrieval_metrics(dsl_rescale(sim)), "v2t_dsl": retrieval_metrics(dsl_rescale(sim.T))}
    for name, want in expected.items():
        assert_metrics_equal(report["metrics"][name], want)
    assert [q["t2v_rank"] for q in report["queries"]] == ranks(sim).tolist()

    # hard subsets: queries = the subset's captions, candidates = all six videos
    motion = report["subsets"]["motion"]
    assert (motion["n_videos"], motion["n_captions"], motion["ignored_ids_not_evaluated"]) == (2, 2, 1)
    assert_metrics_equal(motion["t2v"], metrics_from_ranks(ranks(sim)[[0, 1]]))
    assert_metrics_equal(motion["t2v_dsl"], metrics_from_ranks(ranks(dsl_rescale(sim))[[0, 1]]))
    assert_metrics_equal(motion["v2t"], metrics_from_ranks(ranks(sim.T)[[0, 1]]))
    own_wins = [sim[0, 0] > sim[0, 1], sim[1, 1] > sim[1, 0]]
    assert motion["pair_accuracy"]["accuracy"] == pytest.approx(100.0 * sum(own_wins) / 2)
    assert "pair_accuracy" not in report["subsets"]["small_object"]  # its partner is not evaluated
    assert report["subsets"]["empty"]["n_videos"] == 0
    assert report["pairs"]["all"]["n_queries"] == 2

    md = md_path.read_text()
    assert "| text→video |" in md and "## Hard subsets" in md and "recall.png" in md
    assert f"{report['metrics']['t2v']['R1']:.1f}" in md


def test_eval_multi_caption_jsonl(bundle_dir, dataset, tmp_path):
    from runtime.evaluation import evaluate

    root, _, videos = dataset
    rows = [("video0", "red one"), ("video2", "blue one"), ("video0", "red two"), ("video5", "black one"),
            ("video2", "blue two"), ("video2", "blue three")]
    jsonl = root / "multi.jsonl"
    jsonl.write_text("".join(json.dumps({"video_id": v, "caption": c}) + "\n" for v, c in rows))
    data = evaluate(bundle_dir, jsonl, videos, out_dir=tmp_path / "r", cache_dir=False, progress=False,
                    subsets=False, plot=False)
    order = ["video0", "video2", "video5"]
    gt = np.array([order.index(v) for v, _ in rows])
    sim = independent_similarity(bundle_dir, [c for _, c in rows], [videos / f"{v}.mp4" for v in order])
    assert_metrics_equal(data["metrics"]["t2v"], retrieval_metrics(sim, gt))
    assert_metrics_equal(data["metrics"]["v2t"], v2t_metrics(sim, gt))
    assert_metrics_equal(data["metrics"]["t2v_dsl"], retrieval_metrics(dsl_rescale(sim), gt))
    assert_metrics_equal(data["metrics"]["v2t_dsl"],
                         metrics_from_ranks(v2t_ranks(dsl_rescale(sim.T).T, gt)))
    assert data["metrics"]["t2v"]["n_queries"] == 6 and data["metrics"]["v2t"]["n_queries"] == 3
    assert "recall_png" not in data["files"]


def _cached_eval(dataset, tmp_path, **extra):
    """(run(**overrides) -> evaluate's report with the test's cache, csv, videos) for the cache tests."""
    from runtime.evaluation import evaluate

    _, csv_path, videos = dataset
    kwargs = dict(out_dir=tmp_path / "r", cache_dir=tmp_path / "cache", progress=False, plot=False, **extra)
    return lambda bundle_dir, **overrides: evaluate(bundle_dir, csv_path, videos, **{**kwargs, **overrides})


def test_cache_first_run_encodes_everything(bundle_dir, dataset, tmp_path, monkeypatch):
    spy = EncoderSpy(monkeypatch)
    first = _cached_eval(dataset, tmp_path)(bundle_dir)
    assert sorted(spy.videos) == [f"video{i}.mp4" for i in range(6)] and len(spy.texts) == 6
    assert first["cache"]["videos_encoded"] == 6


def test_cache_second_run_encodes_nothing(bundle_dir, dataset, tmp_path, monkeypatch):
    run = _cached_eval(dataset, tmp_path)
    first = run(bundle_dir)
    spy = EncoderSpy(monkeypatch)
    second = run(bundle_dir)
    assert spy.videos == [] and spy.texts == []
    assert (second["cache"]["videos_from_cache"], second["cache"]["texts_from_cache"]) == (6, 6)
    assert second["metrics"] == first["metrics"]
    assert first["files"]["json"] != second["files"]["json"]  # one report per run


def test_cache_reencodes_only_a_changed_video(bundle_dir, dataset, tmp_path, monkeypatch):
    run = _cached_eval(dataset, tmp_path)
    run(bundle_dir)
    write_clip(dataset[2] / "video3.mp4", (128, 0, 128), 2.5)  # a changed file under the same name
    spy = EncoderSpy(monkeypatch)
    changed = run(bundle_dir)
    assert spy.videos == ["video3.mp4"] and spy.texts == []
    assert changed["metrics"] == run(bundle_dir, cache_dir=False)["metrics"]


def test_cache_another_precision_is_another_key(bundle_dir, dataset, tmp_path, monkeypatch):
    run = _cached_eval(dataset, tmp_path)
    run(bundle_dir)
    spy = EncoderSpy(monkeypatch)
    run(bundle_dir, precision="fp16")
    assert len(spy.videos) == 6


@pytest.fixture()
def truncated_video(dataset):
    """The dataset plus video6.mp4, truncated to half (unreadable), with its caption on CSV line 8."""
    root, csv_path, videos = dataset
    good = (videos / "video5.mp4").read_bytes()
    (videos / "video6.mp4").write_bytes(good[: len(good) // 2])
    with csv_path.open("a") as f:
        f.write("ret6,msr6,video6,a truncated file\n")
    return root, csv_path, videos


def _eval_args(bundle_dir, csv_path, videos, tmp_path) -> list[str]:
    return ["eval", "--bundle", str(bundle_dir), "--csv", str(csv_path), "--videos", str(videos),
            "--out", str(tmp_path / "cli"), "--cache", str(tmp_path / "c"), "--no-progress"]


def test_corrupt_video_stops_the_evaluation_by_default(bundle_dir, truncated_video, tmp_path):
    from runtime.evaluation import evaluate

    _, csv_path, videos = truncated_video
    with pytest.raises(VideoDecodeError, match=r"video6\.mp4"):
        evaluate(bundle_dir, csv_path, videos, out_dir=tmp_path / "r", cache_dir=tmp_path / "c", progress=False)


def test_corrupt_video_is_a_one_line_cli_error_naming_the_file_and_the_fix(bundle_dir, truncated_video, tmp_path):
    from cli.main import main

    result = CliRunner().invoke(main, _eval_args(bundle_dir, *truncated_video[1:], tmp_path))
    assert result.exit_code != 0 and "video6.mp4" in result.output and "--skip-bad" in result.output


def test_missing_video_is_an_annotation_error_without_skip_bad(bundle_dir, truncated_video, tmp_path):
    from runtime.evaluation import evaluate

    _, csv_path, videos = truncated_video
    with csv_path.open("a") as f:
        f.write("ret7,msr7,video7,no such file\n")
    with pytest.raises(AnnotationError, match=r"line 9: video_id 'video7'"):
        evaluate(bundle_dir, csv_path, videos, out_dir=tmp_path / "r", cache_dir=False, progress=False)


def test_skip_bad_lists_corrupt_and_missing_videos_and_drops_their_captions(bundle_dir, truncated_video, tmp_path):
    from cli.main import main

    _, csv_path, videos = truncated_video
    with csv_path.open("a") as f:
        f.write("ret7,msr7,video7,no such file\n")
    result = CliRunner().invoke(main, _eval_args(bundle_dir, csv_path, videos, tmp_path) + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable video(s)" in result.output and "text→video" in result.output
    report = json.loads(next((tmp_path / "cli").glob("*.json")).read_text())
    assert [s["video_id"] for s in report["skipped_videos"]] == ["video6", "video7"]
    assert "file not found" in report["skipped_videos"][1]["reason"]
    assert [q["video_id"] for q in report["removed_queries"]] == ["video6", "video7"]
    assert report["metrics"]["t2v"]["n_queries"] == 6 and report["dataset"]["n_captions"] == 8
    sim = independent_similarity(bundle_dir, [caption(i) for i in range(6)], [videos / f"video{i}.mp4" for i in range(6)])
    assert_metrics_equal(report["metrics"]["t2v"], retrieval_metrics(sim))
    md = next((tmp_path / "cli").glob("*.md")).read_text()
    assert "## Skipped videos" in md and "video6.mp4" in md


def test_eval_cli_prints_metrics_and_writes_reports(bundle_dir, dataset, tmp_path):
    from cli.main import main

    _, csv_path, videos = dataset
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", "--bundle", str(bundle_dir), "--csv", str(csv_path), "--videos",
                                       str(videos), "--out", str(out), "--cache", str(tmp_path / "c"),
                                       "--batch-size", "4", "--workers", "2", "--save-sim", "--no-progress"])
    assert result.exit_code == 0, result.output
    for label in ("text→video", "video→text", "text→video (DSL)", "video→text (DSL)", "wrote"):
        assert label in result.output
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md", ".npy", ".png"]
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["batch_size"] == 4
    sim = independent_similarity(bundle_dir, [caption(i) for i in range(6)], [videos / f"video{i}.mp4" for i in range(6)])
    np.testing.assert_allclose(np.load(next(out.glob("*-sim.npy"))), sim, rtol=1e-5, atol=1e-5)
    assert [q["t2v_top1"] for q in report["queries"]] == [f"video{i}" for i in sim.argmax(axis=1)]


def test_eval_refuses_non_finite_scores_naming_their_source(bundle_dir, dataset, tmp_path, monkeypatch):
    from cli.main import main
    from runtime.encoder import BundleEncoder

    _, csv_path, videos = dataset
    real = BundleEncoder.encode_texts

    def one_nan(self, texts, *args, **kwargs):
        out = np.array(real(self, texts, *args, **kwargs))
        out[texts.index(caption(4))] = np.nan
        return out

    monkeypatch.setattr(BundleEncoder, "encode_texts", one_nan)
    result = CliRunner().invoke(main, ["eval", "--bundle", str(bundle_dir), "--csv", str(csv_path), "--videos",
                                       str(videos), "--no-cache", "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "similarity scores are NaN or infinite" in result.output
    assert f"the text embeddings of {caption(4)!r} are non-finite (text graph of" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- smaller ones (item 17)

def test_upper_case_extensions_are_found_like_index_finds_them(bundle_dir, dataset, tmp_path):
    from runtime.datasets import find_video_file
    from runtime.evaluation import evaluate

    _, csv_path, videos = dataset
    (videos / "video2.mp4").rename(videos / "video2.MP4")
    assert find_video_file(videos, "video2") == videos / "video2.MP4"
    data = evaluate(bundle_dir, csv_path, videos, cache_dir=False, progress=False, write=False)
    assert data["dataset"]["n_videos_evaluated"] == 6
    rs = load_retrieval_set(csv_path, videos)
    assert rs.video_paths["video2"] == videos / "video2.MP4"


def test_non_utf8_annotations_name_the_line(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes("video_id,sentence\nvideo0,a caf\u00e9\n".encode("utf-8") + b"video1,na\xefve latin-1\n")
    with pytest.raises(AnnotationError, match=r"captions.csv: line 3, column 10: byte 0xef is not UTF-8"):
        read_annotations(path)
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_bytes(b'{"video_id": "v", "caption": "ok"}\n{"video_id": "w", "caption": "\xff"}\n')
    with pytest.raises(AnnotationError, match=r"line 2, column 31: byte 0xff is not UTF-8"):
        read_annotations(jsonl)
