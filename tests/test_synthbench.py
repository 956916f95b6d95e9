"""Tests of the synthetic benchmark generator (synthbench).

A tiny dataset (6 train, 2 val, 8 test clips of 2-3 s) is generated once per
module and checked for layout, determinism, hard-pair structure and
resumability; rendered pixels are checked by decoding the MP4s with PyAV.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from synthbench import generate as gen
from synthbench.captions import (
    MAX_CAPTION_WORDS, MOTION_PHRASES, SHAPE_WORDS, SIZE_WORDS, caption_length, captions_for, motions_in,
)
from synthbench.generate import encode_clip, generate_dataset, load_annotations, plan
from synthbench.scene import (
    COLOURS, MOTIONS, OPPOSITE, PALETTE, SHAPES, SIZES, BackgroundSpec, GenParams, ObjectSpec, SceneSpec,
    content_key, plan_split,
)

SHORT = GenParams(min_duration=2.0, max_duration=3.0)
COUNTS = dict(n_train=6, n_val=2, n_test=8)
PACKAGE = Path(__file__).resolve().parents[1] / "synthbench"
#: Words that may differ between the two captions of a motion pair: those
#: where a phrase and its opposite's phrase at the same position differ.
DIRECTION_WORDS = {
    w for m, o in OPPOSITE.items() for pa, pb in zip(MOTION_PHRASES[m], MOTION_PHRASES[o])
    for w, v in zip(pa.split(), pb.split()) if w != v
}


def _generate(root: Path, seed: int = 0, workers: int = 1, **kw) -> dict:
    args = {**COUNTS, **kw}
    return generate_dataset(root, seed=seed, workers=workers, progress=False, params=SHORT, **args)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _scenes(root: Path) -> dict[str, dict]:
    lines = (root / "scenes.jsonl").read_text().splitlines()
    return {rec["video_id"]: rec for rec in map(json.loads, lines)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "a"
    summary = _generate(root, workers=2)  # the pool path
    assert summary["rendered"] == 16 and not summary["incomplete_splits"]
    return root


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "b"
    _generate(root, workers=1)  # in-process path: must give the same result
    return root


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------

def test_layout_and_columns(dataset):
    for name in ("MSRVTT_data.json", "train.csv", "val.csv", "test.csv", "subsets.json", "scenes.jsonl", "meta.json"):
        assert (dataset / name).is_file(), name
    with open(dataset / "test.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["key", "vid_key", "video_id", "sentence"]
        rows = list(reader)
    assert len(rows) == 8
    for i, (key, vid_key, vid, sentence) in enumerate(rows):
        assert key == f"ret{i}"
        assert vid.startswith("video") and vid_key == "msr" + vid[len("video"):]
        assert sentence == sentence.lower() and sentence.strip() == sentence
    with open(dataset / "train.csv", newline="") as f:
        train_rows = list(csv.DictReader(f))
    assert list(train_rows[0]) == ["video_id"] and len(train_rows) == 6

    data = json.loads((dataset / "MSRVTT_data.json").read_text())
    splits = {}
    for v in data["videos"]:
        assert {"video_id", "category", "split", "fps", "duration", "width", "height"} <= set(v)
        assert v["width"] % 2 == 0 and v["height"] % 2 == 0
        assert 2.0 <= v["duration"] <= 3.1
        splits.setdefault(v["split"], set()).add(v["video_id"])
        assert (dataset / "videos" / f"{v['video_id']}.mp4").is_file()
    assert {k: len(s) for k, s in splits.items()} == {"train": 6, "val": 2, "test": 8}
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    assert {r[2] for r in rows} == splits["test"]

    ann = load_annotations(dataset)
    assert len(ann.train) == 6 * SHORT.train_captions and len(ann.val) == 2 and len(ann["test"]) == 8
    assert [vid for vid, _ in ann.test] == [r[2] for r in rows]
    assert [cap for _, cap in ann.test] == [r[3] for r in rows]
    assert ann.video_path(rows[0][2]).is_file()

    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["counts"] == {"train": 6, "val": 2, "test": 8}


def test_scenes_jsonl_round_trips(dataset):
    specs = {s.video_id: s for s in plan_split(0, "test", 8, SHORT)}
    for vid, rec in _scenes(dataset).items():
        if vid in specs:
            assert SceneSpec.from_dict(rec) == specs[vid]


def test_subsets_record_pairs(dataset):
    subsets = json.loads((dataset / "subsets.json").read_text())
    ann = load_annotations(dataset)
    test_ids = {vid for vid, _ in ann.test}
    train_ids = {vid for vid, _ in ann.train}
    # the test split's hard subsets (what eval reports) and the train split's hard negatives
    assert sum(v in test_ids for v in subsets["motion"]) == 2
    assert sum(v in test_ids for v in subsets["small_object"]) == 2
    assert sum(v in train_ids for v in subsets["motion"]) == 2 * (int(COUNTS["n_train"] * 0.4) // 2)
    assert not any(v not in test_ids | train_ids for name in ("motion", "small_object") for v in subsets[name])
    for name in ("motion", "small_object"):
        for vid in subsets[name]:
            partner = subsets["pairs"][vid]
            assert (vid in test_ids) == (partner in test_ids)
            assert subsets["pairs"][partner] == vid and partner in subsets[name]


def test_test_captions_unique(dataset):
    caps = [c for _, c in load_annotations(dataset).test]
    assert len(set(caps)) == len(caps)
    specs = plan_split(0, "test", 200, GenParams())
    keys = [content_key(s.objects) for s in specs]
    assert len(set(keys)) == len(keys)
    texts = [c[0] for c in plan(0, "test", 200, GenParams()).captions.values()]
    assert len(set(texts)) == len(texts)


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------

def test_same_seed_is_identical(dataset, twin):
    for name in ("MSRVTT_data.json", "train.csv", "val.csv", "test.csv", "subsets.json", "scenes.jsonl", "meta.json"):
        assert (dataset / name).read_bytes() == (twin / name).read_bytes(), name
    # Every clip, rendered in a pool worker (dataset) and in-process (twin), byte for byte.
    clips = sorted(p.name for p in (dataset / "videos").glob("*.mp4"))
    assert len(clips) == 16 and clips == sorted(p.name for p in (twin / "videos").glob("*.mp4"))
    differing = [name for name in clips if (dataset / "videos" / name).read_bytes() != (twin / "videos" / name).read_bytes()]
    assert not differing, f"same seed, different MP4 bytes: {differing}"


def test_yuv420p_conversion_matches_bt601():
    """Integer conversion against the real-valued BT.601 limited-range formulas (within one level)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (20, 14, 3)).astype(np.uint8)
    rgb[:2, :2] = 0  # a black and a white block hit the range ends exactly
    rgb[2:4, :2] = 255
    packed = gen.rgb_to_yuv420p(rgb)
    assert packed.shape == (30, 14) and packed.dtype == np.uint8
    y = packed[:20].astype(float)
    chroma = packed[20:].reshape(-1).astype(float)
    u, v = chroma[:70].reshape(10, 7), chroma[70:].reshape(10, 7)
    f = rgb.astype(float) / 255.0
    ry = 16 + 65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]
    mean = f.reshape(10, 2, 7, 2, 3).mean(axis=(1, 3))  # each 2 x 2 block
    ru = 128 - 37.797 * mean[..., 0] - 74.203 * mean[..., 1] + 112.0 * mean[..., 2]
    rv = 128 + 112.0 * mean[..., 0] - 93.786 * mean[..., 1] - 18.214 * mean[..., 2]
    assert np.abs(y - ry).max() <= 1.0 and np.abs(u - ru).max() <= 1.0 and np.abs(v - rv).max() <= 1.0
    assert (y[0, 0], y[2, 0], u[0, 0], v[0, 0], u[1, 0], v[1, 0]) == (16, 235, 128, 128, 128, 128)


def test_different_seed_differs(dataset, tmp_path):
    _generate(tmp_path, seed=1, n_train=0, n_val=0, n_test=2, splits=("test",))
    assert (tmp_path / "test.csv").read_text() != (dataset / "test.csv").read_text()
    a = _decode(dataset / "videos" / "video2000000.mp4")
    b = _decode(tmp_path / "videos" / "video2000000.mp4")
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_split_regenerates_independently(dataset, tmp_path):
    """A split made on its own equals the same split of a full dataset."""
    _generate(tmp_path, n_train=0, n_val=0, splits=("test",))
    assert (tmp_path / "test.csv").read_bytes() == (dataset / "test.csv").read_bytes()
    assert not (tmp_path / "train.csv").exists()


# --------------------------------------------------------------------------
# Hard pairs
# --------------------------------------------------------------------------

def _frames_differ(root: Path, a: str, b: str) -> float:
    fa, fb = _decode(root / "videos" / f"{a}.mp4"), _decode(root / "videos" / f"{b}.mp4")
    assert fa.shape == fb.shape
    return float(np.abs(fa.astype(np.int16) - fb.astype(np.int16)).mean())


def _first_test_pair(dataset, subset: str) -> tuple[dict, dict, str, str]:
    """Test captions, scene records and the first test pair (a, b) of a hard subset."""
    subsets = json.loads((dataset / "subsets.json").read_text())
    caps = dict(load_annotations(dataset).test)
    a = next(v for v in subsets[subset] if v in caps)
    return caps, _scenes(dataset), a, subsets["pairs"][a]


def test_motion_pairs(dataset):
    caps, scenes, a, b = _first_test_pair(dataset, "motion")
    wa, wb = caps[a].split(), caps[b].split()
    assert len(wa) == len(wb)
    diff = {(x, y) for x, y in zip(wa, wb) if x != y}
    assert diff and all(x in DIRECTION_WORDS and y in DIRECTION_WORDS for x, y in diff)
    sa, sb = scenes[a], scenes[b]
    for key in ("width", "height", "fps_num", "fps_den", "n_frames", "background"):
        assert sa[key] == sb[key]
    changed = [(oa, ob) for oa, ob in zip(sa["objects"], sb["objects"]) if oa != ob]
    assert len(changed) == 1
    oa, ob = changed[0]
    assert OPPOSITE[oa["motion"]] == ob["motion"] and oa["start"] == ob["end"] and oa["end"] == ob["start"]
    assert {k: v for k, v in oa.items() if k not in ("motion", "start", "end")} == \
        {k: v for k, v in ob.items() if k not in ("motion", "start", "end")}
    assert _frames_differ(dataset, a, b) > 0.2


PER_MEMBER = ("objects", "video_id", "index", "pair", "pair_change", "captions")


def test_small_object_pairs(dataset):
    caps, scenes, a, b = _first_test_pair(dataset, "small_object")
    assert caps[a] != caps[b]
    assert {k: v for k, v in scenes[a].items() if k not in PER_MEMBER} == \
        {k: v for k, v in scenes[b].items() if k not in PER_MEMBER}
    _check_small_difference(scenes[a]["objects"], scenes[b]["objects"])
    assert _frames_differ(dataset, a, b) > 0.0


def _check_small_difference(objs_a: list, objs_b: list) -> None:
    ua, ub = {o["uid"]: o for o in objs_a}, {o["uid"]: o for o in objs_b}
    changed = [u for u in ua.keys() | ub.keys() if ua.get(u) != ub.get(u)]
    assert len(changed) == 1
    oa, ob = ua.get(changed[0]), ub.get(changed[0])
    present = [o for o in (oa, ob) if o is not None]
    assert all(o["size"] == "small" for o in present)
    if len(present) == 2:
        differs = {k for k in oa if oa[k] != ob[k]}
        assert differs in ({"colour"}, {"shape"})


def test_pairs_at_spec_level():
    """Over many pairs: motion pairs flip one direction, small pairs change one small object."""
    specs = plan_split(3, "test", 120, GenParams())
    by_id = {s.video_id: s for s in specs}
    caps = plan(3, "test", 120, GenParams()).captions
    kinds = set()
    for s in specs:
        if s.subset == "ordinary":
            continue
        p = by_id[s.pair]
        assert p.pair == s.video_id and p.subset == s.subset and p.background == s.background
        if s.subset == "motion":
            changed = [(x, y) for x, y in zip(s.objects, p.objects) if x != y]
            assert len(changed) == 1 and OPPOSITE[changed[0][0].motion] == changed[0][1].motion
            wa, wb = caps[s.video_id][0].split(), caps[p.video_id][0].split()
            assert len(wa) == len(wb)
            assert all(x in DIRECTION_WORDS for x, y in zip(wa, wb) if x != y)
        else:
            _check_small_difference([o.__dict__ for o in s.objects], [o.__dict__ for o in p.objects])
            kinds.add(s.pair_change.split()[0])
        # each member's note is the partner's, seen from the other side
        assert p.pair_change.split(": ")[1].split(" vs ")[::-1] == s.pair_change.split(": ")[1].split(" vs ")
        assert (s.pair_change.split()[0] == "motion") == (s.subset == "motion")
    assert kinds == {"colour", "shape", "presence"}


# --------------------------------------------------------------------------
# Resumability
# --------------------------------------------------------------------------

def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "videos").glob("*.mp4")}


def test_resume_rebuilds_only_missing(dataset, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(dataset, root)
    before = _mtimes(root)
    victim = root / "videos" / "video2000005.mp4"
    original = victim.read_bytes()
    victim.unlink()
    (root / "videos" / ".video2000006.mp4.999.tmp").write_bytes(b"partial")  # a killed writer's leftover
    summary = _generate(root)
    assert summary["rendered"] == 1
    after = _mtimes(root)
    assert set(after) == set(before)
    assert all(after[n] == before[n] for n in before if n != victim.name)
    assert victim.read_bytes() == original  # encoder output is bit-exact
    assert not list((root / "videos").glob(".*.tmp"))
    for name in ("MSRVTT_data.json", "test.csv", "meta.json"):
        assert (root / name).read_bytes() == (dataset / name).read_bytes()


def test_resume_after_interruption(tmp_path, monkeypatch):
    real = gen._render_job
    calls = []

    def flaky(job):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job[0].video_id)
        return real(job)

    monkeypatch.setattr(gen, "_render_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path, n_train=0, n_val=0, n_test=6, splits=("test",))
    monkeypatch.setattr(gen, "_render_job", real)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3
    first = _mtimes(tmp_path)
    summary = _generate(tmp_path, n_train=0, n_val=0, n_test=6, splits=("test",))
    assert summary["rendered"] == 3 and summary["skipped"] == 3
    after = _mtimes(tmp_path)
    assert len(after) == 6 and all(after[n] == first[n] for n in first)


def test_other_seed_in_same_dir_is_refused(dataset, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(dataset, root)
    with pytest.raises(ValueError, match="seed"):
        _generate(root, seed=7)


def test_older_generator_version_in_same_dir_is_refused(dataset, tmp_path):
    """Clips of another generator version are not mixed in; the message says what to do."""
    root = tmp_path / "r"
    shutil.copytree(dataset, root)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "version": "1.1"}))
    with pytest.raises(ValueError, match=r"generator version 1\.1, not seed 0 / version 1\.2; delete it or use another --out"):
        _generate(root)


# --------------------------------------------------------------------------
# Rendered motion, checked on decoded pixels
# --------------------------------------------------------------------------

def _obj(uid, colour, motion, start, end, size="medium", shape="square"):
    return ObjectSpec(uid=uid, shape=shape, colour=colour, size=size, diameter=0.2, motion=motion,
                      start=start, end=end, angle=0.0, spin=0.0)


def _probe_spec(objects, fps=(25, 1), n_frames=75) -> SceneSpec:
    bg = BackgroundSpec(kind="clouds", colours=((120, 120, 125), (140, 135, 130)), angle=0.0, scale=40.0, seed=1)
    return SceneSpec(video_id="probe", split="test", index=0, attempt=0, width=160, height=120,
                     fps_num=fps[0], fps_den=fps[1], n_frames=n_frames, background=bg,
                     objects=tuple(objects), phrase_seed=0)


def _masks(frames: np.ndarray, colour: str) -> np.ndarray:
    ref = np.asarray(PALETTE[colour], np.int16)
    return np.abs(frames.astype(np.int16) - ref).sum(-1) < 90


def _centroids(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
    area = mask.sum((1, 2))
    assert (area > 0).all()
    return np.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], 1)


def test_decoded_motion_matches_claims(tmp_path):
    spec = _probe_spec([
        _obj(0, "red", "right", (0.2, 0.2), (0.8, 0.2)),
        _obj(1, "blue", "left", (0.8, 0.8), (0.2, 0.8)),
    ])
    path = tmp_path / "h.mp4"
    encode_clip(spec, path)
    frames = _decode(path)
    assert frames.shape == (75, 120, 160, 3)
    for colour, sign in (("red", 1), ("blue", -1)):
        c = _centroids(_masks(frames, colour))[::25]  # the 1 fps samples
        steps = np.diff(c[:, 0]) * sign
        assert (steps > 10).all(), (colour, c)
        assert np.abs(np.diff(c[:, 1])).max() < 2

    spec = _probe_spec([
        _obj(0, "yellow", "down", (0.2, 0.2), (0.2, 0.8)),
        _obj(1, "green", "up", (0.8, 0.8), (0.8, 0.2)),
        _obj(2, "purple", "grow", (0.5, 0.5), (0.5, 0.5)),
    ], fps=(30000, 1001), n_frames=90)
    encode_clip(spec, path)
    frames = _decode(path)
    for colour, sign in (("yellow", 1), ("green", -1)):
        c = _centroids(_masks(frames, colour))[::29]
        assert (np.diff(c[:, 1]) * sign > 10).all(), (colour, c)
    area = _masks(frames, "purple").sum((1, 2))[::29]
    assert (np.diff(area) > 0).all() and area[-1] > 2 * area[0]


def test_blink_and_shrink_seen_by_1fps_sampler(tmp_path):
    spec = _probe_spec([
        _obj(0, "white", "blink", (0.3, 0.5), (0.3, 0.5), size="small"),
        _obj(1, "orange", "shrink", (0.7, 0.5), (0.7, 0.5), shape="star"),
    ], fps=(30000, 1001), n_frames=180)  # 6 s; the sampler steps int(29.97) = 29 frames
    path = tmp_path / "b.mp4"
    encode_clip(spec, path)
    frames = _decode(path)
    white = _masks(frames, "white").sum((1, 2))[::29]
    assert white.min() == 0 and white.max() > 0
    assert ((white > 0) == (np.arange(len(white)) % 2 == 0)).all(), white
    orange = _masks(frames, "orange").sum((1, 2))[::29]
    assert (np.diff(orange) < 0).all()


def test_small_object_is_small_and_visible(tmp_path):
    spec = _probe_spec([_obj(0, "red", "still", (0.5, 0.5), (0.5, 0.5), size="small", shape="circle")], n_frames=3)
    spec = replace(spec, objects=(replace(spec.objects[0], diameter=0.07),))
    path = tmp_path / "s.mp4"
    encode_clip(spec, path)
    area = _masks(_decode(path), "red").sum((1, 2))
    expected = np.pi * (0.07 * 120 / 2) ** 2
    assert (np.abs(area - expected) < 0.5 * expected).all(), (area, expected)


def test_mpeg4_fallback_encodes(tmp_path):
    spec = _probe_spec([_obj(0, "red", "right", (0.2, 0.5), (0.8, 0.5))], n_frames=10)
    encode_clip(spec, tmp_path / "m.mp4", codec="mpeg4")
    with av.open(str(tmp_path / "m.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert _decode(tmp_path / "m.mp4").shape == (10, 120, 160, 3)


# --------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------

def test_caption_grammar_coverage():
    p = plan(5, "test", 300, GenParams())
    caps = {vid: c[0] for vid, c in p.captions.items()}
    seen_motions = set()
    for s in p.specs:
        text = caps[s.video_id]
        assert text == text.lower() and caption_length(text) <= MAX_CAPTION_WORDS
        # every object is named with its size word, colour, shape and motion
        assert sum(text.count(f" {c} ") for c in COLOURS) == len(s.objects)
        for o in s.objects:
            assert any(f"{size} {o.colour} {shape}" in text
                       for size in SIZE_WORDS[o.size] for shape in SHAPE_WORDS[o.shape]), (o, text)
        assert motions_in(text) == {o.motion for o in s.objects}, text
        seen_motions |= motions_in(text)
    assert seen_motions == set(MOTIONS)
    for m in MOTIONS:  # the canonical motion words all occur
        assert any(MOTION_PHRASES[m][0] in t for t in caps.values()), m
    vocab = " ".join(caps.values())
    assert all(c in vocab for c in COLOURS) and all(s in vocab for s in SHAPES)
    assert all(any(w in vocab for w in SIZE_WORDS[s]) for s in SIZES)


def test_train_gets_several_phrasings():
    specs = plan_split(0, "train", 20, GenParams())
    for s in specs:
        caps = captions_for(s, 5)
        assert len(caps) == 5 and len(set(caps)) == 5


def test_modules_avoid_torch_and_siblings():
    allowed = {"numpy", "av", "PIL", "tqdm", "__future__"}
    import sys
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} reaches outside the package"
                if node.level == 1:  # a sibling inside synthbench
                    continue
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_cli(tmp_path):
    from click.testing import CliRunner

    from cli.synthbench import synthbench_command as main

    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["--out", str(out), "--train", "0", "--val", "0", "--test", "2",
                                       "--splits", "test", "--max-duration", "2.5", "--quiet", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"test": 2}
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    bad = CliRunner().invoke(main, ["--out", str(out), "--splits", "tset", "--quiet"])
    assert bad.exit_code != 0
    assert os.path.exists(out / "meta.json")
