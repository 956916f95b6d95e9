"""Training toolchain: caption tokenizer, frame cache, loss, optimiser groups, resume and DDP all-gather.

Everything runs on tiny synthbench clips (2-3 s, rendered once per session) and the tiny preset with
few frames and few perturbed samples, so the module stays well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file

import ts2net
import ts2net.training.frame_cache as data_mod
import ts2net.model as model_mod
from runtime import load_tokenizer
from runtime.video import VideoDecodeError, load_video
from ts2net.config import TS2NetConfig
from ts2net.training.frame_cache import FrameCache, TrainClips, cached_split, load_split
from ts2net.selection import perturbed_topk
from cli.train import train_command
from ts2net.training.loss import EmbedBatch, batch_loss
from ts2net.training.optim import param_groups, warmup_cosine
from ts2net.training.tokenizer import train_caption_tokenizer

FRAMES = 4  # max_frames of the tiny test models (2-3 s clips give 2-3 real frames)
TINY_SETS = (f"max_frames={FRAMES}", "perturbed_samples=8")
CAPTIONS = ["a small red circle moves left", "a big blue square spins while a tiny green star blinks",
            "there is a medium-sized yellow triangle that falls", "A  Purple CROSS grows over a striped background"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """6 train clips (5 captions each) and 3 val clips, 2-3 s long."""
    from synthbench import GenParams, generate_dataset

    root = tmp_path_factory.mktemp("bench")
    generate_dataset(root, seed=0, n_train=6, n_val=3, n_test=0, workers=1, progress=False,
                     params=GenParams(min_duration=2.0, max_duration=3.0))
    return root


@pytest.fixture(scope="module")
def tokenizer(bench, tmp_path_factory):
    from synthbench import load_annotations

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_caption_tokenizer([c for _, c in load_annotations(bench).train], 320, path)
    return load_tokenizer(path)


def tiny_cfg(tokenizer, **overrides) -> TS2NetConfig:
    sets = dict(s.split("=") for s in TINY_SETS)
    return TS2NetConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_frames=FRAMES,
                               perturbed_samples=int(sets["perturbed_samples"]), **overrides)


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_special_ids_are_highest_and_round_trip(tmp_path):
    path = tmp_path / "tokenizer.json"
    trained = train_caption_tokenizer(CAPTIONS * 3, 300, path)
    tok = load_tokenizer(path)
    size = tok.vocab_size
    assert size <= 300 and (tok.sot_id, tok.eot_id) == (size - 2, size - 1) == (trained.sot_id, trained.eot_id)
    ids = tok.encode_batch(CAPTIONS + ["unseen words: Zebra 42!"], max_words=16)
    assert ids.dtype == np.int64 and ids.shape == (5, 16) and ids.max() < size
    for row in ids:
        eot = int(np.flatnonzero(row == tok.eot_id)[0])
        assert row[0] == tok.sot_id and int(row.argmax()) == eot  # EOT-argmax pooling holds
        assert (row[eot + 1:] == 0).all() and not (row[1:eot] >= tok.sot_id).any()
    assert (tok.encode_batch(["A  Purple CROSS"], 8) == tok.encode_batch(["a purple cross"], 8)).all()
    assert tok.bpe_ids("!")[-1] == 0  # pad id 0 is an ordinary byte token ("!")
    # deterministic: caption order and duplicates do not change the file
    train_caption_tokenizer(list(reversed(CAPTIONS)) * 2, 300, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


# ---------------------------------------------------------------------------- frame cache
def _spy(monkeypatch, fail_on: int | None = None) -> list[str]:
    calls: list[str] = []

    def spy(path, max_frames=12, size=224, **kw):
        calls.append(os.path.basename(path))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt  # an interruption in the middle of a fill
        return load_video(path, max_frames=max_frames, size=size, **kw)

    monkeypatch.setattr(data_mod, "load_video", spy)
    return calls


def test_frame_cache_decodes_once_and_resumes(bench, tokenizer, tmp_path, monkeypatch):
    split = load_split(bench, "train", tokenizer, 16)
    videos = split.video_paths
    calls = _spy(monkeypatch, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        FrameCache(tmp_path, "train", 32, FRAMES).fill(videos, progress=False)
    assert len(calls) == 3
    calls = _spy(monkeypatch)
    cache = FrameCache(tmp_path, "train", 32, FRAMES)
    assert cache.fill(videos, progress=False) == len(videos) - 2  # the two finished ones were kept
    assert len(calls) == len(videos) - 2
    cache = FrameCache(tmp_path, "train", 32, FRAMES)  # a new run: everything is cached
    assert cache.fill(videos, progress=False) == 0 and len(calls) == len(videos) - 2
    # the cached rows are load_video's output (to float16 precision)
    ds = TrainClips(split, cache, seed=0)
    for clip in (0, len(ds) - 1):
        ids, frames, mask = ds[clip]
        want_frames, want_mask = load_video(videos[split.video_ids[clip]], FRAMES, 32)
        np.testing.assert_allclose(frames.numpy(), want_frames, atol=2e-3)
        assert mask.tolist() == want_mask.tolist() and frames.dtype == torch.float32
        assert any((ids == torch.from_numpy(split.tokens[i])).all() for i in split.captions_of_video[clip])
    # a re-rendered (touched) video is decoded again, alone
    st = os.stat(videos[split.video_ids[1]])
    os.utime(videos[split.video_ids[1]], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert FrameCache(tmp_path, "train", 32, FRAMES).fill(videos, progress=False) == 1
    assert calls[-1] == f"{split.video_ids[1]}.mp4"


def test_caption_choice_is_seeded_per_epoch(bench, tokenizer, tmp_path):
    split = load_split(bench, "train", tokenizer, 16)
    cache = cached_split(split, tmp_path, 32, FRAMES, progress=False)
    ds = TrainClips(split, cache, seed=3)
    picks = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        picks.append([ds.caption_index(c) for c in range(len(ds))])
    assert picks[0] == picks[2] and picks[0] != picks[1]
    assert all(split.video_of_caption[p] == c for c, p in enumerate(picks[1]))


def test_corrupt_video_raises_naming_the_file(bench, tmp_path):
    good = next((bench / "videos").glob("*.mp4"))
    broken = tmp_path / "broken_clip.mp4"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # truncated MP4
    garbage = tmp_path / "garbage_clip.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    for bad in (broken, garbage):
        cache = FrameCache(tmp_path / "cache", "x", 32, FRAMES)
        with pytest.raises(VideoDecodeError, match=bad.name):
            cache.fill({"good": good, "bad": bad}, progress=False)
        assert "bad" in FrameCache(tmp_path / "cache", "x", 32, FRAMES).missing({"bad": bad})  # never stored


# ---------------------------------------------------------------------------- optimisation
def test_learning_rates_per_parameter_group(tokenizer):
    model = ts2net.TS2Net(tiny_cfg(tokenizer))
    groups = param_groups(model, lr=1e-3, clip_lr_scale=0.01, weight_decay=0.2)
    seen = {}
    for group in groups:
        for name, param in zip(group["names"], group["params"]):
            assert name not in seen
            seen[name] = group
            assert group["lr"] == pytest.approx(1e-5 if name.startswith("clip.") else 1e-3), name
            assert group["weight_decay"] == (0.2 if param.ndim >= 2 else 0.0), name
    assert set(seen) == {n for n, _ in model.named_parameters()}
    new = {n for n in seen if not n.startswith("clip.")}
    assert {n.split(".")[0] for n in new} == {"frame_position_embeddings", "transformerClip", "visual_token_selector"}
    # the schedule scales both towers alike: warm-up to the peak, cosine to zero
    f = warmup_cosine(4, 20)
    assert f(0) == pytest.approx(0.2) and f(3) == pytest.approx(0.8) and f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, f)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx((1e-5 if group["tower"] == "clip" else 1e-3) * f(6))


def test_training_steps_reduce_the_loss_on_a_fixed_batch(bench, tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(tokenizer)
    split = load_split(bench, "train", tokenizer, cfg.max_words)
    ds = TrainClips(split, cached_split(split, tmp_path, cfg.image_size, FRAMES, progress=False))
    ids, frames, mask = (torch.stack(x) for x in zip(*[ds[i] for i in range(len(ds))]))
    model = ts2net.TS2Net(cfg)
    optimizer = torch.optim.AdamW(param_groups(model, 2e-3, 1.0, 0.0))

    def eval_loss() -> float:
        with torch.no_grad():
            return model.eval()(ids, frames, mask).item()  # hard top-K: a noise-free measurement

    before = eval_loss()
    model.train()
    for _ in range(8):
        loss = batch_loss(EmbedBatch(model), cfg, ids, frames, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.7 * before


# ---------------------------------------------------------------------------- run, CLI, resume
def _run_args(bench, out, cache, *extra) -> list[str]:
    args = ["--data", str(bench), "--out", str(out), "--preset", "tiny", "--epochs", "2", "--batch-size", "3",
            "--threads", "1", "--seed", "7", "--lr", "1e-3", "--cache-dir", str(cache), "--quiet"]
    for s in TINY_SETS:
        args += ["--set", s]
    return args + list(extra)


def test_too_few_clips_for_one_batch_is_a_clear_error(bench, tmp_path):
    args = _run_args(bench, tmp_path / "run", tmp_path / "cache")
    args[args.index("--batch-size") + 1] = "8"
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code != 0
    assert "6 training clips (1 hard pairs) do not fill one batch of 8" in result.output


def test_cli_run_and_resume_match_an_uninterrupted_run(bench, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache"
    full = runner.invoke(train_command, _run_args(bench, tmp_path / "full", cache), catch_exceptions=False)
    assert full.exit_code == 0, full.output
    out = tmp_path / "full"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_val"]["t2v"]["n_queries"] == 3.0
    assert set(summary["final_val"]["v2t"]) >= {"R1", "R5", "R10", "MdR"}
    model = ts2net.load_model(out)
    assert model.cfg.vocab_size == load_tokenizer(out / "tokenizer.json").vocab_size
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4] and sum("val" in r for r in log) == 2

    # the same run, interrupted after epoch 1, then resumed
    part = runner.invoke(train_command, _run_args(bench, tmp_path / "part", cache, "--stop-after", "1"),
                         catch_exceptions=False)
    assert part.exit_code == 0, part.output
    assert not (tmp_path / "part" / "model.safetensors").exists()
    resumed = runner.invoke(train_command, _run_args(bench, tmp_path / "part", cache, "--resume"),
                            catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_b = [json.loads(line) for line in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in log_b] == [r.get("loss") for r in log]

    changed = runner.invoke(train_command, _run_args(bench, tmp_path / "part", cache, "--resume", "--seed", "8"))
    assert changed.exit_code != 0 and "--seed" in changed.output


def test_cli_starts_from_a_clip_file_with_clip_learning_rates(bench, tmp_path, shared_clip_dir):
    from factories import clip_state_dict, random_model

    clip_file = tmp_path / "tiny-clip.pt"
    torch.save(clip_state_dict(random_model(TS2NetConfig.preset("tiny"))), clip_file)
    args = ["--data", str(bench), "--out", str(tmp_path / "run"), "--clip", str(clip_file),
            "--tokenizer", str(shared_clip_dir / "bpe_simple_vocab_16e6.txt.gz"), "--epochs", "1",
            "--batch-size", "3", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for s in TINY_SETS:
        args += ["--set", s]
    result = CliRunner().invoke(train_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["learning_rates"] == {"new_modules": 1e-4, "clip": pytest.approx(1e-7)}  # official defaults
    assert summary["config"]["vocab_size"] == 49408 and summary["config"]["max_frames"] == FRAMES
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").eot_id == 49407
    assert ts2net.load_model(tmp_path / "run").cfg.frame_mask_mode == "fixed"


# ---------------------------------------------------------------------------- DDP all-gather
def _full_batch(cfg: TS2NetConfig, n: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size - 2, (n, cfg.max_words), generator=g)
    lengths = torch.randint(3, cfg.max_words, (n,), generator=g)
    ids[torch.arange(n), lengths] = cfg.vocab_size - 1  # EOT, the row maximum
    frames = torch.randn(n, cfg.max_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    mask = torch.ones(n, cfg.max_frames, dtype=torch.int64)
    mask[0, 2:] = 0
    mask[3, 1:] = 0
    return ids, frames, mask


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = TS2NetConfig.from_dict(cfg_dict)
        torch.manual_seed(0)
        model = ts2net.TS2Net(cfg).train()
        ids, frames, mask = _full_batch(cfg, 4)
        local = slice(rank * 2, rank * 2 + 2)
        embed = torch.nn.parallel.DistributedDataParallel(EmbedBatch(model))
        torch.manual_seed(100 + rank)  # this process's perturbed top-K noise
        loss = batch_loss(embed, cfg, ids[local], frames[local], mask[local])
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save({"loss": loss.detach(), "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_gather_loss_and_gradients_match_one_process(tokenizer, tmp_path, monkeypatch):
    """2 gloo processes x 2 videos == 1 process x 4 videos, perturbed top-K and all.

    Each process draws its selection noise from its own RNG; the single-process reference draws
    the noise of rows 0-1 and 2-3 from generators seeded like process 0 and 1, so both compute
    exactly the same function and only the all-gather bookkeeping is under test.
    """
    cfg = tiny_cfg(tokenizer)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    rows_per_process = 2 * cfg.max_frames

    def split_noise(scores, k, num_samples, sigma, generator=None, gradient="full"):
        halves = scores.split(rows_per_process)
        return torch.cat([perturbed_topk(h, k, num_samples, sigma, torch.Generator().manual_seed(100 + i), gradient)
                          for i, h in enumerate(halves)])

    monkeypatch.setattr(model_mod, "perturbed_topk", split_noise)
    torch.manual_seed(0)
    model = ts2net.TS2Net(cfg).train()
    loss = model(*_full_batch(cfg, 4))  # TS2Net.forward: the model's own loss on the whole batch
    loss.backward()
    for result in results:
        torch.testing.assert_close(result["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        for name, param in model.named_parameters():
            torch.testing.assert_close(result["grads"][name], param.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert any(p.grad.abs().max() > 0 for n, p in model.named_parameters() if "score_predictor" in n)


# ---------------------------------------------------------------------------- hard pairs in batches
def test_paired_batches_keep_pairs_together_and_split_over_processes():
    from ts2net.training.frame_cache import PairedBatchSampler

    partner = np.full(40, -1)
    for a, b in [(0, 1), (5, 9), (10, 11), (20, 33), (38, 39)]:
        partner[a], partner[b] = b, a
    one = PairedBatchSampler(partner, 8, seed=1)
    assert len(one) == 5
    for epoch in (0, 1):
        one.set_epoch(epoch)
        batches = list(one)
        assert len(batches) == 5 and all(len(b) == 8 for b in batches)
        assert len({c for b in batches for c in b}) == 40   # 40 clips fill 5 batches: nothing repeats
        for b in batches:
            assert all(partner[c] < 0 or partner[c] in b for c in b)
        halves = [PairedBatchSampler(partner, 8, rank=r, world_size=2, seed=1) for r in (0, 1)]
        for h in halves:
            h.set_epoch(epoch)
        assert [x + y for x, y in zip(*[list(h) for h in halves])] == batches
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first
    one.set_epoch(0)
    assert list(one) == first
    bad = partner.copy()
    bad[0] = 2
    with pytest.raises(ValueError, match="clip 0 names 2"):
        PairedBatchSampler(bad, 8)


def test_train_split_pairs_share_a_caption_variant(bench, tokenizer, tmp_path):
    split = load_split(bench, "train", tokenizer, 16)
    pairs = [(i, int(j)) for i, j in enumerate(split.partner) if i < j]
    assert pairs, "the train split should hold hard pairs"
    cache = cached_split(split, tmp_path, 32, FRAMES, progress=False)
    ds = TrainClips(split, cache, seed=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for a, b in pairs:
            ta, tb = split.captions[ds.caption_index(a)].split(), split.captions[ds.caption_index(b)].split()
            # the same phrasing: equal length and only the changed attribute's word(s) differ
            assert len(ta) == len(tb) and 0 < sum(x != y for x, y in zip(ta, tb)) <= 2, (ta, tb)


def test_a_second_cache_filler_waits_and_decodes_nothing_twice(bench, tokenizer, tmp_path, monkeypatch):
    """Two runs started together on one cache (make -j2 train-demo): the fill lock serialises them."""
    import fcntl
    import threading
    import time

    split = load_split(bench, "train", tokenizer, 16)
    calls = _spy(monkeypatch)
    first, second = FrameCache(tmp_path, "train", 32, FRAMES), FrameCache(tmp_path, "train", 32, FRAMES)
    first.dir.mkdir(parents=True)
    lock = open(first.dir / data_mod.LOCK_NAME, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)                     # another filler holds the cache
    result = {}
    waiting = threading.Thread(target=lambda: result.update(n=second.fill(split.video_paths, progress=False)))
    waiting.start()
    time.sleep(0.5)
    assert not calls and waiting.is_alive()             # it waits instead of decoding beside the holder
    first._index = first._read_index()
    assert first._fill_locked(split.video_paths, 0, False) == len(split.video_ids)   # the holder fills
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    waiting.join(timeout=30)
    assert result["n"] == 0 and len(calls) == len(split.video_ids)   # nothing decoded twice
