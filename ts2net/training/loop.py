"""The training run: train (or fine-tune) TS2-Net on a synthbench / MSR-VTT-style dataset, on CPU, 1 or N processes.

    ts2net train --data DATA --out RUN --preset demo --epochs 3
    torchrun --nproc_per_node 2 -m cli train --data DATA --out RUN --preset demo   # gloo DDP

The objective is the official one (docs/semantics.md, row 8): symmetric cross-entropy over the
logit-scaled B x B similarity of a batch, with the perturbed top-K selection of training mode.
With several processes every process all-gathers the text embeddings, frame embeddings and frame
masks, so each one computes the full (B*world) x (B*world) matrix -- the negatives a single
process with the whole batch would see (see `gather_with_grad` for the gradient bookkeeping).
`--batch-size` is therefore the GLOBAL batch, split evenly over the processes.

Everything a run produces lives in `--out`: train_log.jsonl (one line per step and per epoch),
checkpoints/last.pt (model, optimizer, schedule, step, RNG states; rewritten atomically after
every epoch, what `--resume` continues from), best/ (the best-validation model), and at the end
model.safetensors + config.json (the final model, `ts2net.load_model(RUN)`), tokenizer.json and
train_summary.json.

Reproducibility: with a fixed seed a single-process run is deterministic, and an interrupted run
resumed with `--resume` ends with exactly the parameters of an uninterrupted one, because the
data order (sampler seeded by epoch), the caption choice (seeded by seed/epoch/clip) and the
perturbed top-K noise (the torch RNG, saved per process) all restart from saved state.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import ts2net
from runtime.tokenizer import ClipTokenizer
from runtime.files import atomic_write_text
from ts2net.config import TS2NetConfig
from ts2net.training.frame_cache import FrameCache, PairedBatchSampler, TrainClips, cached_split, load_split
from ts2net.model import TS2Net
from .distributed import DistInfo, barrier, gather_no_grad, init_distributed
from .loss import EmbedBatch, LOGIT_SCALE_MAX, batch_objective, pair_positions
from .pair_tracking import PairTracker, TrackedPairs, tracking_line, trim_tracking
from .optim import make_optimizer
from .options import LOG_NAME, SUMMARY_NAME, TrainOptions, build_model, resolve_tokenizer
from .state import check_resume_options, gather_rng_states, jsonable, load_state, save_state, trim_log
from .validation import evaluate, metrics_line


def train_step(embed: nn.Module, model: TS2Net, optimizer: torch.optim.Optimizer, scheduler, batch,
               grad_clip: float, pairs: torch.Tensor | None = None, pair_loss_weight: float = 0.0,
               logit_scale: float | None = None) -> tuple[float, float, dict[str, float]]:
    """One optimisation step on one (per-process) batch; (loss, gradient norm before clipping, loss parts).

    `pairs` are the hard pairs' positions in the global batch (for the pair-contrastive term);
    `logit_scale`, when given, is the scheduled (not learnt) exp(logit scale) of this step.
    The update is skipped when the loss is not finite (the caller stops the run), so a NaN never
    reaches the weights or the checkpoint.
    """
    if logit_scale is not None:
        with torch.no_grad():
            model.clip.logit_scale.fill_(math.log(logit_scale))
    loss, parts = batch_objective(embed, model.cfg, *batch, pairs=pairs, pair_loss_weight=pair_loss_weight)
    if not torch.isfinite(loss):
        return loss.item(), float("nan"), parts
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.clip.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    return loss.item(), float(grad_norm), parts


def _prepare_data(opts: TrainOptions, cfg: TS2NetConfig, tokenizer: ClipTokenizer, info: DistInfo):
    """Splits, filled frame caches (the main process decodes, the others wait and read), the train loader."""
    train_split = load_split(opts.data, "train", tokenizer, cfg.max_words, opts.max_train_clips)
    val_split = _optional_split(opts.data, "val", tokenizer, cfg.max_words)
    cache_root = Path(opts.cache_dir) if opts.cache_dir else Path(opts.data) / ".frame_cache"
    splits = [s for s in (train_split, val_split) if s is not None]
    caches = {s.name: cached_split(s, cache_root, cfg.image_size, cfg.max_frames, opts.workers,
                                   opts.progress and info.main, fill=info.main) for s in splits}
    barrier()
    if not info.main:
        caches = {s.name: FrameCache(cache_root, s.name, cfg.image_size, cfg.max_frames) for s in splits}
    dataset = TrainClips(train_split, caches["train"], seed=opts.seed)
    # the sampler's order depends only on (seed, epoch): a resumed epoch sees the same batches;
    # hard pairs of the benchmark always share a batch (PairedBatchSampler says why)
    sampler = PairedBatchSampler(train_split.partner, opts.batch_size, info.rank, info.world_size, opts.seed,
                                 pair_repeats=opts.pair_repeats, pairs_only_epochs=opts.curriculum_pair_epochs)
    empty = [e + 1 for e in range(opts.epochs) if sampler.batches_in_epoch(e) == 0]
    if empty:
        where = (f" in curriculum epoch {empty[0]} (hard-pair clips only; lower --curriculum-pair-epochs)"
                 if sampler.pairs_only(empty[0] - 1) else "")
        raise ValueError(f"{len(dataset)} training clips ({len(sampler.pairs)} hard pairs) do not fill one batch "
                         f"of {opts.batch_size}{where}")
    loader = DataLoader(_NumberedClips(dataset), batch_sampler=sampler, num_workers=opts.workers)
    tracker = _pair_tracker(opts, cfg, tokenizer, train_split, caches["train"], cache_root, info)
    return train_split, val_split, caches, dataset, sampler, loader, tracker


def _pair_tracker(opts: TrainOptions, cfg: TS2NetConfig, tokenizer: ClipTokenizer, train_split, train_cache,
                  cache_root: Path, info: DistInfo) -> PairTracker | None:
    """The hard pairs scored every --track-pairs-every steps: the train split's and the held-out test split's."""
    if opts.track_pairs_every <= 0 or not info.main:
        return None
    from synthbench import load_annotations

    changes = load_annotations(opts.data).subsets.get("pair_change", {})
    sets = []
    if (train_split.partner >= 0).any():
        sets.append(TrackedPairs(train_split, train_cache, changes, opts.track_pairs_max))
    test = _optional_split(opts.data, "test", tokenizer, cfg.max_words)
    if test is not None and (test.partner >= 0).any():
        test_cache = cached_split(test, cache_root, cfg.image_size, cfg.max_frames, opts.workers, opts.progress)
        sets.append(TrackedPairs(test, test_cache, changes, opts.track_pairs_max))
    if not sets:
        raise ValueError(f"--track-pairs-every: {opts.data} has no hard pairs in its train or test split "
                         "(subsets.json 'pairs')")
    return PairTracker(Path(opts.out), sets, opts.track_pairs_every, opts.eval_batch_size)


def run_training(opts: TrainOptions, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train as `opts` says; returns the summary written to train_summary.json.

    `stop_after_epoch` ends the run after that many epochs (checkpoint written, no final model):
    an interruption on purpose, for time-boxed jobs and for testing `resume`.
    """
    info = init_distributed()
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 1) // info.world_size))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "checkpoints" / "last.pt"
    log_path = out / LOG_NAME
    if opts.batch_size % info.world_size:
        raise ValueError(f"--batch-size {opts.batch_size} (global) must be a multiple of the "
                         f"{info.world_size} processes")
    if opts.resume and not state_path.is_file():
        raise ValueError(f"--resume: no checkpoint at {state_path}")
    state = load_state(state_path) if opts.resume else None
    if state is not None:
        check_resume_options(state["options"], opts)

    tokenizer = resolve_tokenizer(opts, out, info.main)
    torch.manual_seed(opts.seed)  # identical initialisation in every process
    model = build_model(opts, tokenizer).train()
    cfg = model.cfg
    if state is not None:
        model.load_state_dict(state["model"])

    train_split, val_split, caches, dataset, sampler, loader, tracker = _prepare_data(opts, cfg, tokenizer, info)
    epoch_steps = [sampler.batches_in_epoch(e) for e in range(opts.epochs)]
    steps_per_epoch = epoch_steps[-1]  # a curriculum's first epochs are shorter
    total_steps = sum(epoch_steps)
    if opts.logit_scale_schedule is not None:
        model.clip.logit_scale.requires_grad_(False)  # scheduled, not learnt (and not in the optimizer)

    # ---- optimisation state
    optimizer, scheduler, warmup = make_optimizer(model, opts, total_steps)
    embed: nn.Module = EmbedBatch(model)
    if info.active:
        embed = nn.parallel.DistributedDataParallel(embed, find_unused_parameters=not cfg.token_selection)
    start_epoch, step, wall_before, best, history = _restore(state, optimizer, scheduler, opts, info, log_path)
    if tracker is not None:
        if state is None:  # a fresh run: the curves start at the initialisation
            tracker.path.unlink(missing_ok=True)
            _track(tracker, model, 0, 0)
        else:  # a resumed run continues the interrupted one's curves (the same points as without the interruption)
            trim_tracking(tracker.path, step)
    run = _RunContext(opts, info, log_path, tracker, train_split.partner, total_steps)

    lr, clip_scale = opts.learning_rates()
    if info.main:
        print(f"[train] {cfg.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"{len(dataset)} clips ({len(sampler.pairs)} hard pairs), global batch {opts.batch_size} x {info.world_size} process(es), "
              f"{steps_per_epoch} steps/epoch, {opts.epochs} epochs ({total_steps} steps), lr {lr:g} "
              f"(CLIP x{clip_scale:g}), warm-up {warmup} steps, {torch.get_num_threads()} threads"
              + (f"; levers: {_levers(opts)}" if _levers(opts) else ""), flush=True)
    started = time.perf_counter()
    step_times: list[float] = []
    last_val = None
    for epoch in range(start_epoch, opts.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        step, losses = _run_epoch(epoch, loader, embed, model, optimizer, scheduler, run, step, step_times)

        record: dict[str, Any] = {"step": step, "epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if val_split is not None and info.main:
            last_val = evaluate(model, val_split, caches["val"], opts.eval_batch_size)
            record["val"] = last_val
            if best is None or last_val["rsum"] > best["val"]["rsum"]:
                best = {"epoch": epoch + 1, "step": step, "val": last_val}
                ts2net.save_model(model, out / "best", metadata={"epoch": str(epoch + 1), "step": str(step)})
            print(f"[train] epoch {epoch + 1}: train loss {record['train_loss']:.4f}; val {metrics_line(last_val)}",
                  flush=True)
        history.append(record)
        rng = gather_rng_states(info)
        if info.main:
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            save_state(state_path, options=jsonable(dataclasses.asdict(opts)), config=cfg.to_dict(),
                       epoch=epoch + 1, step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), rng=rng, best=best, history=history,
                       wall_s=wall_before + time.perf_counter() - started)
        barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < opts.epochs:
            return {"stopped_after_epoch": epoch + 1, "step": step}

    summary = {
        "config": cfg.to_dict(), "options": jsonable(dataclasses.asdict(opts)),
        "learning_rates": {"new_modules": lr, "clip": lr * clip_scale}, "warmup_steps": warmup,
        "world_size": info.world_size, "threads": torch.get_num_threads(),
        "train_clips": len(dataset), "train_hard_pairs": len(sampler.pairs),
        "train_captions": len(train_split.captions),
        "epochs": opts.epochs, "steps": step, "steps_per_epoch": steps_per_epoch, "epoch_steps": epoch_steps,
        "levers": _levers(opts),
        "pair_tracking": (tracker.path.name if tracker is not None else None),
        "wall_s": round(wall_before + time.perf_counter() - started, 2),
        "mean_step_s_this_session": round(float(np.mean(step_times)), 4) if step_times else None,
        "final_val": last_val if last_val is not None else (history[-1].get("val") if history else None),
        "best_val": best, "torch": torch.__version__,
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "sot_id": tokenizer.sot_id, "eot_id": tokenizer.eot_id},
    }
    if info.main:
        ts2net.save_model(model, out, metadata={"epoch": str(opts.epochs), "step": str(step)})
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    barrier()
    return summary


def _restore(state: dict[str, Any] | None, optimizer, scheduler, opts: TrainOptions, info: DistInfo, log_path: Path):
    """(start epoch, step, wall seconds so far, best, history) of a resumed run, its optimizer, schedule
    and RNG restored and its log trimmed to the checkpoint; a fresh run's values otherwise."""
    if state is None:
        torch.manual_seed(opts.seed + 1_000_003 * info.rank)  # perturbed top-K noise differs per process
        if info.main:
            log_path.unlink(missing_ok=True)
        return 0, 0, 0.0, None, []
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) != info.world_size:
        raise ValueError(f"the run was checkpointed with {len(state['rng'])} processes; resume with as many")
    torch.set_rng_state(state["rng"][info.rank])
    if info.main:
        trim_log(log_path, state["step"])
    return state["epoch"], state["step"], state["wall_s"], state["best"], state["history"]


@dataclasses.dataclass
class _RunContext:
    """What every step of a run needs besides the model and optimizer."""

    opts: TrainOptions
    info: DistInfo
    log_path: Path
    tracker: PairTracker | None
    partner: np.ndarray  # the train split's hard-pair partners (-1: none)
    total_steps: int


def _levers(opts: TrainOptions) -> dict[str, Any]:
    """The plateau levers a run uses (those not at their default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    names = ("pair_loss_weight", "curriculum_pair_epochs", "pair_repeats", "logit_scale_schedule")
    return {k: jsonable(getattr(opts, k)) for k in names if getattr(opts, k) != defaults[k]}


def _track(tracker: PairTracker, model: TS2Net, step: int, epoch: int, **extra: Any) -> None:
    record = tracker.track(model, step, epoch, **extra)
    print(f"[train] step {step}: {tracking_line(record)}", flush=True)


def _run_epoch(epoch: int, loader, embed: nn.Module, model: TS2Net, optimizer, scheduler, run: _RunContext,
               step: int, step_times: list[float]) -> tuple[int, list[float]]:
    """One epoch of training steps, one log line per step; (step count after it, the epoch's losses)."""
    opts, info = run.opts, run.info
    losses = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="step",
               disable=not (opts.progress and info.main))
    with open(run.log_path, "a") if info.main else _NullFile() as log:
        for clips, input_ids, frames, frame_mask in bar:
            t0 = time.perf_counter()
            pairs = pair_positions(gather_no_grad(clips).tolist(), run.partner) if opts.pair_loss_weight else None
            loss, grad_norm, parts = train_step(embed, model, optimizer, scheduler, (input_ids, frames, frame_mask),
                                                opts.grad_clip, pairs, opts.pair_loss_weight,
                                                opts.logit_scale_at(step, run.total_steps))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step + 1} (epoch {epoch + 1}); "
                                         "lower --lr or check the data")
            step += 1
            step_times.append(time.perf_counter() - t0)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            line = {"step": step, "epoch": epoch + 1, "loss": loss,
                    "lr": _group_lr(optimizer, "new"), "clip_lr": _group_lr(optimizer, "clip"),
                    "grad_norm": grad_norm, "logit_scale": model.clip.logit_scale.exp().item(),
                    "step_s": round(step_times[-1], 4)}
            if "pair_loss" in parts:
                line.update(parts)
            log.write(json.dumps(line) + "\n")
            log.flush()
            if run.tracker is not None and (run.tracker.due(step) or step == run.total_steps):
                _track(run.tracker, model, step, epoch + 1, loss=loss)
    bar.close()
    return step, losses


def _group_lr(optimizer: torch.optim.Optimizer, tower: str) -> float | None:
    return next((g["lr"] for g in optimizer.param_groups if g["tower"] == tower), None)


def _optional_split(data: str, name: str, tokenizer, max_words: int):
    try:
        return load_split(data, name, tokenizer, max_words)
    except ValueError:
        return None


class _NumberedClips(torch.utils.data.Dataset):
    """TrainClips items prefixed with the clip index, so a step knows which hard pairs its batch holds."""

    def __init__(self, clips: TrainClips):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, clip: int):
        return (clip, *self.clips[clip])


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
