"""The levers against the hard-pair plateau (pair loss, curriculum, pair repeats, logit-scale schedule)
and the per-change-type pair tracking of a training run; all on tiny models and a few 2-3 s clips."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import ts2net
from cli.train import train_command
from runtime import load_tokenizer
from runtime.video import load_video
from ts2net.training.frame_cache import PairedBatchSampler
from ts2net.training.loss import EmbedBatch, batch_loss, batch_objective, pair_contrastive_loss, pair_positions
from ts2net.training.options import TrainOptions
from ts2net.training.pair_tracking import CHANGE_TYPES, change_type

FRAMES = 4


@pytest.fixture(scope="module")
def paired_bench(tmp_path_factory) -> Path:
    """8 train clips, all in hard pairs (2 motion, 2 small-object), and 8 test clips (1 + 1 pairs), 2-3 s long."""
    from synthbench import GenParams, generate_dataset

    root = tmp_path_factory.mktemp("paired-bench")
    generate_dataset(root, seed=0, n_train=8, n_val=0, n_test=8, workers=1, progress=False,
                     params=GenParams(min_duration=2.0, max_duration=3.0, train_motion_pair_frac=0.5,
                                      train_small_pair_frac=0.5))
    return root


# ---------------------------------------------------------------------------- change types
def test_change_type_names_every_change_synthbench_makes():
    assert change_type("motion of object 0: up vs down") == "translation"
    assert change_type("motion of object 2: right vs left") == "translation"
    assert change_type("motion of object 1: grow vs shrink") == "grow/shrink"
    assert change_type("colour of object 1: red vs blue") == "colour"
    assert change_type("shape of object 0: circle vs square") == "shape"
    assert change_type("presence of object 2: absent vs present") == "presence"
    with pytest.raises(ValueError, match="'size of object 0: small vs large'"):
        change_type("size of object 0: small vs large")


# ---------------------------------------------------------------------------- pair loss
def _by_hand(sim: np.ndarray, pairs) -> float:
    """Mean over pairs of (CE over the rows + CE over the columns of the 2 x 2 block) / 2, in float64."""
    total = 0.0
    for a, b in pairs:
        block = sim[np.ix_([a, b], [a, b])].astype(np.float64)
        rows = -np.mean([block[i, i] - np.log(np.exp(block[i]).sum()) for i in range(2)])
        cols = -np.mean([block[i, i] - np.log(np.exp(block[:, i]).sum()) for i in range(2)])
        total += (rows + cols) / 2
    return total / len(pairs)


def test_pair_contrastive_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 7)).astype(np.float32) * 5
    pairs = [(0, 1), (3, 6), (4, 5)]
    got = pair_contrastive_loss(torch.from_numpy(sim), torch.tensor(pairs)).item()
    assert got == pytest.approx(_by_hand(sim, pairs), rel=1e-6)
    assert pair_contrastive_loss(torch.from_numpy(sim), torch.zeros(0, 2, dtype=torch.int64)).item() == 0.0


def test_pair_loss_cannot_be_satisfied_by_equal_captions():
    """Two equal caption rows: the column (video -> text) half is exactly ln 2, so the term stays >= ln 2."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        sim = rng.normal(size=(4, 4)).astype(np.float32) * 10
        sim[1] = sim[0]                                     # captions of pair (0, 1) collapsed
        got = pair_contrastive_loss(torch.from_numpy(sim), torch.tensor([(0, 1)])).item()
        assert got >= math.log(2) - 1e-6


def test_pair_loss_gradient_pushes_the_pair_captions_apart():
    """A toy: two nearly equal caption embeddings and two distinct clips; descending the pair loss
    separates the captions (1 - cos grows), each towards its own clip."""
    torch.manual_seed(0)
    base = torch.randn(16)
    text = torch.stack([base, base + 1e-3 * torch.randn(16)]).requires_grad_(True)
    video = torch.randn(2, 16)
    optimizer = torch.optim.SGD([text], lr=0.5)

    def gap() -> float:
        t = torch.nn.functional.normalize(text.detach(), dim=-1)
        return 1.0 - float(t[0] @ t[1])

    before = gap()
    for _ in range(20):
        t = torch.nn.functional.normalize(text, dim=-1)
        v = torch.nn.functional.normalize(video, dim=-1)
        loss = pair_contrastive_loss(20.0 * t @ v.T, torch.tensor([(0, 1)]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert gap() > 100 * before
    t, v = (torch.nn.functional.normalize(x.detach(), dim=-1) for x in (text, video))
    sim = t @ v.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]


def test_pair_positions_finds_whole_pairs_in_a_batch():
    partner = np.full(12, -1)
    for a, b in [(2, 3), (5, 7), (8, 9)]:
        partner[a], partner[b] = b, a
    got = pair_positions([5, 2, 10, 3, 9, 8], partner)           # 7 (5's partner) is not in the batch
    assert got.tolist() == [[1, 3], [4, 5]]
    assert pair_positions([0, 1], partner).shape == (0, 2)


def test_batch_objective_is_the_clip_loss_plus_the_weighted_pair_term():
    torch.manual_seed(0)
    cfg = ts2net.TS2NetConfig.preset("tiny", max_frames=FRAMES, perturbed_samples=8)
    model = ts2net.TS2Net(cfg).eval()                            # hard top-K: no noise between the calls
    ids = torch.randint(1, cfg.vocab_size - 1, (4, cfg.max_words))
    ids[:, -1] = cfg.vocab_size - 1
    frames = torch.randn(4, FRAMES, 3, cfg.image_size, cfg.image_size)
    mask = torch.ones(4, FRAMES, dtype=torch.int64)
    pairs = torch.tensor([(0, 1), (2, 3)])
    with torch.no_grad():
        clip_only = batch_loss(EmbedBatch(model), cfg, ids, frames, mask).item()
        plain, parts0 = batch_objective(EmbedBatch(model), cfg, ids, frames, mask, pairs, 0.0)
        total, parts = batch_objective(EmbedBatch(model), cfg, ids, frames, mask, pairs, 2.5)
        sim = model.similarity(model.encode_text(ids), model.encode_video(frames, mask)[0], mask)
    assert plain.item() == clip_only and "pair_loss" not in parts0
    assert parts["pair_loss"] == pytest.approx(_by_hand(sim.numpy(), pairs.tolist()), rel=1e-5)
    assert total.item() == pytest.approx(clip_only + 2.5 * parts["pair_loss"], rel=1e-6)


# ---------------------------------------------------------------------------- sampler levers
def _partner(n: int, pairs) -> np.ndarray:
    partner = np.full(n, -1)
    for a, b in pairs:
        partner[a], partner[b] = b, a
    return partner


PAIRS = [(0, 1), (5, 9), (10, 11), (20, 33), (38, 39)]


def test_default_sampler_order_is_unchanged_by_the_levers():
    """repeats 1 and no curriculum: the units of two in the (seed, epoch) order, concatenated (re-derived here)."""
    partner = _partner(40, PAIRS)
    sampler = PairedBatchSampler(partner, 8, seed=1)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        rng = np.random.default_rng([1, epoch])
        singles = rng.permutation(np.flatnonzero(partner < 0))
        units = [list(p) for p in PAIRS] + [[int(singles[i]), int(singles[i + 1])] for i in range(0, 30, 2)]
        flat = [c for i in rng.permutation(len(units)) for c in units[i]]
        assert list(sampler) == [flat[k * 8:(k + 1) * 8] for k in range(5)]


def test_pair_repeats_present_each_pair_k_times_never_twice_in_a_batch():
    partner = _partner(40, PAIRS)
    sampler = PairedBatchSampler(partner, 8, seed=2, pair_repeats=4)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sampler.batches_in_epoch(epoch)
        counts = Counter(c for b in batches for c in b)
        assert all(len(b) == 8 and len(set(b)) == 8 for b in batches)
        assert all(partner[c] < 0 or partner[c] in b for b in batches for c in b)
        paired = [c for p in PAIRS for c in p]
        # 5 pairs x 4 + 15 twos of singles = 35 units = 70 clips: 8 full batches (64 clips), 3 units dropped
        assert len(batches) == 8
        assert sum(counts[c] for c in paired) + sum(counts[c] for c in np.flatnonzero(partner < 0)) == 64
        assert max(counts[c] for c in paired) == 4 and sum(counts[c] for c in paired) >= 4 * 10 - 6
        assert max(counts[c] for c in np.flatnonzero(partner < 0)) == 1
    halves = [PairedBatchSampler(partner, 8, rank=r, world_size=2, seed=2, pair_repeats=4) for r in (0, 1)]
    assert [x + y for x, y in zip(*[list(h) for h in halves])] == list(PairedBatchSampler(partner, 8, seed=2,
                                                                                           pair_repeats=4))
    with pytest.raises(ValueError, match="even global batch"):
        PairedBatchSampler(partner, 7, pair_repeats=2)


def test_curriculum_epochs_hold_only_pair_clips():
    pairs = [(2 * k, 2 * k + 1) for k in range(8)]                # 16 paired clips, 24 singles
    partner = _partner(40, pairs)
    sampler = PairedBatchSampler(partner, 8, seed=0, pairs_only_epochs=2)
    assert [sampler.batches_in_epoch(e) for e in range(4)] == [2, 2, 5, 5]
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        clips = {c for b in batches for c in b}
        if epoch < 2:
            assert clips == set(range(16))                        # every pair clip, no single
        else:
            assert clips == set(range(40))
    with pytest.raises(ValueError, match="needs hard pairs"):
        PairedBatchSampler(np.full(8, -1), 4, pairs_only_epochs=1)


def test_logit_scale_schedule_is_linear_and_checked():
    opts = TrainOptions(data="d", out="o", logit_scale_schedule=(10, 100))
    assert opts.logit_scale_at(0, 11) == 10 and opts.logit_scale_at(10, 11) == 100
    assert opts.logit_scale_at(5, 11) == pytest.approx(55)
    assert TrainOptions(data="d", out="o").logit_scale_at(3, 10) is None
    with pytest.raises(ValueError, match="in \\(0, 100\\]"):
        TrainOptions(data="d", out="o", logit_scale_schedule=(10, 200))
    with pytest.raises(ValueError, match="pair-loss-weight"):
        TrainOptions(data="d", out="o", pair_loss_weight=-1)


# ---------------------------------------------------------------------------- a run with every lever
def _args(bench: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    # tracking every 3 steps: the epoch boundary the resumed run restarts from (step 4) is not a tracking step
    return ["--data", str(bench), "--out", str(out), "--preset", "tiny", "--epochs", "3", "--batch-size", "4",
            "--threads", "1", "--seed", "5", "--lr", "1e-3", "--cache-dir", str(cache), "--quiet",
            "--set", f"max_frames={FRAMES}", "--set", "perturbed_samples=8", "--pair-loss-weight", "1",
            "--curriculum-pair-epochs", "1", "--pair-repeats", "2", "--logit-scale", "10:20",
            "--track-pairs-every", "3", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pair_accuracy_by_hand(run: Path, bench: Path, split: str, record: dict) -> None:
    """Re-score the tracked pairs of `split` from the video files with the model's own torch similarity."""
    from synthbench import load_annotations

    ann = load_annotations(bench)
    partner, changes = ann.subsets["pairs"], ann.subsets["pair_change"]
    captions = [(v, c) for v, c in ann[split] if v in partner]
    tokenizer = load_tokenizer(run / "tokenizer.json")
    model = ts2net.load_model(run).eval()
    wins: dict[str, list[bool]] = {}
    with torch.no_grad():
        for vid, text in captions:
            # the frame cache holds load_video's frames in float16: round the same way
            frames, masks = zip(*[load_video(ann.video_path(v), FRAMES, model.cfg.image_size)
                                  for v in (vid, partner[vid])])
            frames = [f.astype(np.float16).astype(np.float32) for f in frames]
            ids = torch.tensor(tokenizer.encode_batch([text], model.cfg.max_words))
            mask = torch.from_numpy(np.stack(masks))
            sim = model.similarity(model.encode_text(ids), model.encode_video(torch.from_numpy(np.stack(frames)),
                                                                                mask)[0], mask)
            wins.setdefault(change_type(changes[vid]), []).append(bool(sim[0, 0] > sim[0, 1]))
    for kind, won in wins.items():
        assert record[split][kind]["accuracy"] == pytest.approx(100.0 * np.mean(won), abs=1e-6), kind
        assert record[split][kind]["n_queries"] == len(won)


def test_run_with_every_lever_tracks_pairs_and_resumes_exactly(paired_bench, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache"
    out = tmp_path / "full"
    result = runner.invoke(train_command, _args(paired_bench, out, cache), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_summary.json").read_text())
    # every train clip is paired: 4 pairs x 2 presentations = 16 clips = 4 batches of 4 per epoch at most
    sampler = PairedBatchSampler(np.array([1, 0, 3, 2, 5, 4, 7, 6]), 4, seed=5, pair_repeats=2, pairs_only_epochs=1)
    steps = [sampler.batches_in_epoch(e) for e in range(3)]
    assert summary["epoch_steps"] == steps and summary["steps"] == sum(steps) and min(steps) >= 3
    assert summary["levers"] == {"pair_loss_weight": 1.0, "curriculum_pair_epochs": 1, "pair_repeats": 2,
                                 "logit_scale_schedule": [10.0, 20.0]}
    log = [r for r in _lines(out / "train_log.jsonl") if "loss" in r]
    assert all("pair_loss" in r and r["loss"] == pytest.approx(r["clip_loss"] + r["pair_loss"], rel=1e-5)
               for r in log)
    assert [round(r["logit_scale"], 4) for r in (log[0], log[-1])] == [10.0, 20.0]
    track = _lines(out / "pair_tracking.jsonl")
    assert [r["step"] for r in track] == sorted({0, *range(3, sum(steps) + 1, 3), sum(steps)})
    for r in track:
        assert {"train", "test"} <= set(r) and set(r["train"]) - {"all"} <= set(CHANGE_TYPES)
        assert r["train"]["all"]["n_pairs"] == 4 and r["test"]["all"]["n_pairs"] == 2
    assert (out / "pair_tracking.png").stat().st_size > 0
    for split in ("train", "test"):
        _pair_accuracy_by_hand(out, paired_bench, split, track[-1])

    part = tmp_path / "part"
    assert runner.invoke(train_command, _args(paired_bench, part, cache, "--stop-after", "1"),
                         catch_exceptions=False).exit_code == 0
    resumed = runner.invoke(train_command, _args(paired_bench, part, cache, "--resume"), catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(out / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _lines(part / "pair_tracking.jsonl") == track
    changed = runner.invoke(train_command, _args(paired_bench, part, cache, "--resume", "--pair-repeats", "3"))
    assert changed.exit_code != 0 and "--pair-repeats" in changed.output

    from ts2net.training.pair_tracking import compare_runs

    table = compare_runs({"uninterrupted": out, "resumed": part}, tmp_path / "report")
    assert table["uninterrupted"]["points"] == table["resumed"]["points"]
    assert table["resumed"]["finished"] and table["resumed"]["steps_done"] == sum(steps)
    assert [p["step"] for p in table["resumed"]["points"]] == [r["step"] for r in track]
    assert table["resumed"]["points"][-1]["test"]["all"]["accuracy"] == track[-1]["test"]["all"]["accuracy"]
    for f in ("comparison.json", "comparison.md", "comparison.png", "resumed/pair_tracking.jsonl"):
        assert (tmp_path / "report" / f).stat().st_size > 0


def test_bad_lever_values_are_one_line_errors(paired_bench, tmp_path):
    args = _args(paired_bench, tmp_path / "run", tmp_path / "cache")
    args[args.index("--logit-scale") + 1] = "hot"
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 2 and "'hot': expected START or START:END" in result.output
    args[args.index("--logit-scale") + 1] = "0:50"
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 2 and "both ends must be in (0, 100]" in result.output


def test_tracked_pairs_cover_every_change_type_within_the_limit():
    from ts2net.training.frame_cache import CaptionedSplit
    from ts2net.training.pair_tracking import select_pairs

    kinds = ["motion of object 0: up vs down"] * 3 + ["motion of object 0: grow vs shrink"] + \
        ["colour of object 1: red vs blue", "shape of object 0: star vs cross"]
    ids = [f"video{i}" for i in range(12)]
    partner = np.array([i + 1 if i % 2 == 0 else i - 1 for i in range(12)])
    changes = {ids[2 * k + m]: kinds[k] for k in range(6) for m in (0, 1)}
    split = CaptionedSplit("train", ids, {}, [], np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64), partner)
    assert select_pairs(split, changes, 4) == [(0, 1), (6, 7), (8, 9), (10, 11)]   # one of each type
    assert select_pairs(split, changes, 100) == [(2 * k, 2 * k + 1) for k in range(6)]
