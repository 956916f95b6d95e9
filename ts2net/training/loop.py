"""Train (or fine-tune) TS2-Net on a synthbench / MSR-VTT-style dataset, on CPU, 1 or N processes.

    python -m ts2net.training.loop --data DATA --out RUN --preset demo --epochs 3
    torchrun --nproc_per_node 2 -m ts2net.training.loop --data DATA --out RUN --preset demo   # gloo DDP

The objective is the official one (semantics section 8): symmetric cross-entropy over the
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
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import ts2net
from runtime.metrics import retrieval_metrics, v2t_metrics
from runtime.tokenizer import ClipTokenizer, find_bpe_vocab, load_tokenizer
from ts2net._io import atomic_write_bytes, atomic_write_text
from ts2net.config import TS2NetConfig
from ts2net.training.frame_cache import FrameCache, PairedBatchSampler, SplitVideos, TrainClips, cached_split, load_split
from ts2net.model import TS2Net, contrastive_loss, effective_frame_mask, frame_weighted_similarity
from ts2net.training.tokenizer import DEFAULT_VOCAB_SIZE, train_caption_tokenizer

STATE_FORMAT, STATE_VERSION = "ts2net-train-state", 1
LOG_NAME, SUMMARY_NAME, TOKENIZER_NAME = "train_log.jsonl", "train_summary.json", "tokenizer.json"
#: Parameters outside the CLIP towers: the modules TS2-Net adds (they get the full learning rate).
NEW_MODULE_PREFIXES = ("frame_position_embeddings.", "transformerClip.", "visual_token_selector.")
CLIP_PREFIX = "clip."
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP's clamp: a temperature below 1/100 only destabilises training


# ============================================================================ options and config
@dataclass
class TrainOptions:
    """Everything that defines a run (the CLI's options). Saved in the checkpoint; see RESULT_OPTIONS."""

    data: str
    out: str
    preset: str | None = None
    config: str | None = None
    sets: tuple[str, ...] = ()
    clip: str | None = None
    tokenizer: str | None = None
    epochs: int = 5
    batch_size: int = 16
    lr: float | None = None             # None: 1e-4 from CLIP (official), 5e-4 from scratch
    clip_lr_scale: float | None = None  # None: 1e-3 from CLIP (official), 1.0 from scratch
    warmup_steps: int | None = None     # None: 10% of all steps
    weight_decay: float = 0.2
    grad_clip: float = 1.0
    seed: int = 0
    resume: bool = False
    workers: int = 0
    max_train_clips: int | None = None
    threads: int | None = None
    cache_dir: str | None = None
    eval_batch_size: int = 32
    progress: bool = True

    def learning_rates(self) -> tuple[float, float]:
        lr = self.lr if self.lr is not None else (1e-4 if self.clip else 5e-4)
        scale = self.clip_lr_scale if self.clip_lr_scale is not None else (1e-3 if self.clip else 1.0)
        return lr, scale


#: Options that change the result: a resumed run must be given the same ones.
RESULT_OPTIONS = ("data", "preset", "config", "sets", "clip", "tokenizer", "epochs", "batch_size", "lr",
                  "clip_lr_scale", "warmup_steps", "weight_decay", "grad_clip", "seed", "max_train_clips")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` overrides; VALUE is JSON when it parses (true, 3, 0.5, [10, 11]), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. token_shift=false")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_model(opts: TrainOptions, tokenizer: ClipTokenizer) -> TS2Net:
    """A fresh model: from an OpenAI CLIP archive, else from a preset / JSON config (default "demo").

    From scratch, vocab_size follows the tokenizer (a caption BPE's size depends on its corpus)
    unless `--set vocab_size=...` fixes it. The caller seeds torch first: initialisation is random.
    """
    overrides = parse_sets(opts.sets)
    if opts.clip:
        if opts.preset or opts.config:
            raise ValueError("--clip infers the model size from the CLIP weights; drop --preset/--config "
                             "(use --set for TS2-Net fields such as max_frames)")
        model = ts2net.load_model(opts.clip, **overrides)
    else:
        if opts.preset and opts.config:
            raise ValueError("give --preset or --config, not both")
        if opts.config:
            base = TS2NetConfig.load(opts.config)
        else:
            base = TS2NetConfig.preset(opts.preset or "demo")
        if "vocab_size" not in overrides:
            overrides["vocab_size"] = tokenizer.vocab_size
        model = TS2Net(base.replace(**overrides))
    vocab = model.cfg.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's token embedding only "
                         f"{vocab} rows; use the tokenizer the weights were trained with")
    return model


def resolve_tokenizer(opts: TrainOptions, out: Path, main: bool) -> ClipTokenizer:
    """The run's tokenizer, written to RUN/tokenizer.json (by the main process).

    --tokenizer wins; a CLIP start needs CLIP's BPE (found beside the CLIP file or in an installed
    clip/open_clip); otherwise a caption BPE is trained on the benchmark's train captions.
    """
    target = out / TOKENIZER_NAME
    if opts.resume and target.is_file():
        return load_tokenizer(target)
    if main:
        if opts.tokenizer:
            tok = load_tokenizer(opts.tokenizer)
        elif opts.clip:
            candidates = [Path(opts.clip).parent / "bpe_simple_vocab_16e6.txt.gz", find_bpe_vocab()]
            found = next((p for p in candidates if p is not None and Path(p).is_file()), None)
            if found is None:
                raise ValueError("--clip needs CLIP's tokenizer: pass --tokenizer bpe_simple_vocab_16e6.txt.gz "
                                 "(or a tokenizer.json built from it)")
            tok = load_tokenizer(found)
        else:
            from synthbench import load_annotations

            captions = [c for _, c in load_annotations(opts.data).train]
            tok = train_caption_tokenizer(captions, DEFAULT_VOCAB_SIZE)
        tok.save(target)
    barrier()
    tok = load_tokenizer(target)
    if tok.eot_id != tok.vocab_size - 1:
        raise ValueError(f"{target}: EOT id {tok.eot_id} is not the highest id ({tok.vocab_size - 1}); the text "
                         "tower pools at argmax(input_ids), so EOT must be the largest id")
    return tok


# ============================================================================ distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the gloo process group described by torchrun's env vars (RANK, WORLD_SIZE, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this process's slice of the gradient SUMMED over processes.

    Every process computes the same loss L from the gathered tensors, and DDP then AVERAGES the
    parameter gradients over the W processes. Process r's embeddings e_r enter every process's
    copy of L, but autograd on process q only reaches the parameters through q's own slice.
    Summing the W gradients of the gathered tensor and keeping slice r gives process r
    sum_q dL_q/de_r = W * dL/de_r, and DDP's average divides by W again: exactly the gradient
    one process holding the whole batch would get. (The official code keeps the local slice without
    summing, so its gradients are 1/W of that: Adam's update barely notices, but gradient clipping
    thresholds and the logged norms then depend on the number of GPUs.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every process) over processes, along dim 0, differentiably."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


# ============================================================================ loss
class EmbedBatch(nn.Module):
    """The part of a training step that runs per process: a batch -> its embeddings.

    Wrapped in DistributedDataParallel it is what DDP's forward sees, so its gradient hooks see
    every parameter; the logit scale is returned from here too for the same reason.
    """

    def __init__(self, model: TS2Net):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor):
        text = self.model.encode_text(input_ids)
        frame_embeds, _ = self.model.encode_video(frames, frame_mask)
        return text, frame_embeds, self.model.clip.logit_scale.exp()


def batch_loss(embed: nn.Module, cfg: TS2NetConfig, input_ids: torch.Tensor, frames: torch.Tensor,
               frame_mask: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the similarity of the whole (all-gathered) batch.

    Equal to `TS2Net.forward` on the concatenation of every process's batch (same similarity
    code: `frame_weighted_similarity` on the effective frame mask, in float32).
    """
    text, frame_embeds, logit_scale = embed(input_ids, frames, frame_mask)
    text, frame_embeds = gather_with_grad(text), gather_with_grad(frame_embeds)
    mask = effective_frame_mask(gather_no_grad(frame_mask), cfg.tokens_per_frame, cfg.frame_mask_mode)
    sim = frame_weighted_similarity(text.float(), frame_embeds.float(), mask, logit_scale,
                                    cfg.frame_softmax_factor)
    return contrastive_loss(sim)


# ============================================================================ optimisation
def param_groups(model: TS2Net, lr: float, clip_lr_scale: float, weight_decay: float) -> list[dict]:
    """AdamW groups: CLIP towers at lr * clip_lr_scale, TS2-Net's new modules at lr; weight decay
    only on matrices (biases, LayerNorms, the class embedding and the logit scale are not decayed,
    as usual for transformers: shrinking them toward 0 changes the function, not its complexity)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(CLIP_PREFIX):
            tower = "clip"
        elif name.startswith(NEW_MODULE_PREFIXES):
            tower = "new"
        else:
            raise ValueError(f"parameter {name!r} belongs neither to the CLIP towers nor to {NEW_MODULE_PREFIXES}; "
                             "decide its learning rate in ts2net.training.loop.param_groups")
        decay = param.ndim >= 2
        groups.setdefault((tower, decay), []).append((name, param))
    out = []
    for (tower, decay), items in sorted(groups.items()):
        out.append({"params": [p for _, p in items], "names": [n for n, _ in items], "tower": tower,
                    "lr": lr * (clip_lr_scale if tower == "clip" else 1.0),
                    "weight_decay": weight_decay if decay else 0.0})
    return out


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear from 1/(warmup+1) up to 1 over `warmup_steps`, then cosine down to 0 at the end."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(model: TS2Net, opts: TrainOptions, total_steps: int):
    lr, scale = opts.learning_rates()
    optimizer = torch.optim.AdamW(param_groups(model, lr, scale, opts.weight_decay), betas=(0.9, 0.98), eps=1e-6)
    warmup = opts.warmup_steps if opts.warmup_steps is not None else round(0.1 * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total_steps))
    return optimizer, scheduler, warmup


# ============================================================================ evaluation
@torch.no_grad()
def evaluate(model: TS2Net, split, cache: FrameCache, batch_size: int = 32) -> dict[str, Any]:
    """Text-to-video and video-to-text retrieval on a split (eval mode: hard top-K)."""
    was_training = model.training
    model.eval()
    try:
        frame_embeds, masks = [], []
        for frames, mask in DataLoader(SplitVideos(split, cache), batch_size=batch_size):
            frame_embeds.append(model.encode_video(frames, mask)[0])
            masks.append(mask)
        tokens = torch.from_numpy(split.tokens)
        text = torch.cat([model.encode_text(tokens[i:i + batch_size]) for i in range(0, len(tokens), batch_size)])
        video, mask = torch.cat(frame_embeds), torch.cat(masks)
        sim = torch.cat([model.similarity(text[i:i + 256], video, mask) for i in range(0, len(text), 256)]).numpy()
    finally:
        model.train(was_training)
    t2v = retrieval_metrics(sim, split.video_of_caption)
    v2t = v2t_metrics(sim, split.video_of_caption)
    return {"t2v": t2v, "v2t": v2t, "rsum": sum(d[k] for d in (t2v, v2t) for k in ("R1", "R5", "R10")),
            "n_texts": int(sim.shape[0]), "n_videos": int(sim.shape[1])}


def _metrics_line(m: dict[str, Any]) -> str:
    return " ".join(f"{d} R@1/5/10 {m[d]['R1']:.1f}/{m[d]['R5']:.1f}/{m[d]['R10']:.1f} MdR {m[d]['MdR']:g}"
                    for d in ("t2v", "v2t"))


# ============================================================================ run state
def save_state(path: Path, **state: Any) -> None:
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a {STATE_FORMAT} v{STATE_VERSION} file")
    return state


def _check_resume_options(saved: dict[str, Any], opts: TrainOptions) -> None:
    now = dataclasses.asdict(opts)
    differ = [f"--{k.replace('_', '-')}: run used {saved.get(k)!r}, now {now[k]!r}"
              for k in RESULT_OPTIONS if _jsonable(saved.get(k)) != _jsonable(now[k])]
    if differ:
        raise ValueError("--resume must repeat the interrupted run's options:\n  " + "\n  ".join(differ))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not info.active:
        return [state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train_step(embed: nn.Module, model: TS2Net, optimizer: torch.optim.Optimizer, scheduler, batch,
               grad_clip: float) -> tuple[float, float]:
    """One optimisation step on one (per-process) batch; returns (loss, gradient norm before clipping).

    The update is skipped when the loss is not finite (the caller stops the run), so a NaN never
    reaches the weights or the checkpoint.
    """
    loss = batch_loss(embed, model.cfg, *batch)
    if not torch.isfinite(loss):
        return loss.item(), float("nan")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.clip.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    return loss.item(), float(grad_norm)


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
    sampler = PairedBatchSampler(train_split.partner, opts.batch_size, info.rank, info.world_size, opts.seed)
    if len(sampler) == 0:
        raise ValueError(f"{len(dataset)} training clips ({len(sampler.pairs)} hard pairs) do not fill one batch "
                         f"of {opts.batch_size}")
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=opts.workers)
    return train_split, val_split, caches, dataset, sampler, loader


# ============================================================================ training
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
        _check_resume_options(state["options"], opts)

    tokenizer = resolve_tokenizer(opts, out, info.main)
    torch.manual_seed(opts.seed)  # identical initialisation in every process
    model = build_model(opts, tokenizer).train()
    cfg = model.cfg
    if state is not None:
        model.load_state_dict(state["model"])

    train_split, val_split, caches, dataset, sampler, loader = _prepare_data(opts, cfg, tokenizer, info)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * opts.epochs

    # ---- optimisation state
    optimizer, scheduler, warmup = make_optimizer(model, opts, total_steps)
    embed: nn.Module = EmbedBatch(model)
    if info.active:
        embed = nn.parallel.DistributedDataParallel(embed, find_unused_parameters=not cfg.token_selection)
    start_epoch, step, wall_before, best = 0, 0, 0.0, None
    history: list[dict] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, wall_before = state["epoch"], state["step"], state["wall_s"]
        best, history = state["best"], state["history"]
        if len(state["rng"]) != info.world_size:
            raise ValueError(f"the run was checkpointed with {len(state['rng'])} processes; resume with as many")
        torch.set_rng_state(state["rng"][info.rank])
        if info.main:
            _trim_log(log_path, step)
    else:
        torch.manual_seed(opts.seed + 1_000_003 * info.rank)  # perturbed top-K noise differs per process
        if info.main:
            log_path.unlink(missing_ok=True)

    lr, clip_scale = opts.learning_rates()
    if info.main:
        print(f"[train] {cfg.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"{len(dataset)} clips ({len(sampler.pairs)} hard pairs), global batch {opts.batch_size} x {info.world_size} process(es), "
              f"{steps_per_epoch} steps/epoch, {opts.epochs} epochs, lr {lr:g} (CLIP x{clip_scale:g}), "
              f"warm-up {warmup} steps, {torch.get_num_threads()} threads", flush=True)
    started = time.perf_counter()
    step_times: list[float] = []
    last_val = None
    for epoch in range(start_epoch, opts.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="step",
                   disable=not (opts.progress and info.main))
        with open(log_path, "a") if info.main else _NullFile() as log:
            for input_ids, frames, frame_mask in bar:
                t0 = time.perf_counter()
                loss, grad_norm = train_step(embed, model, optimizer, scheduler, (input_ids, frames, frame_mask),
                                             opts.grad_clip)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at step {step + 1} (epoch {epoch + 1}); "
                                             "lower --lr or check the data")
                step += 1
                step_times.append(time.perf_counter() - t0)
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
                log.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": loss,
                                      "lr": _group_lr(optimizer, "new"), "clip_lr": _group_lr(optimizer, "clip"),
                                      "grad_norm": grad_norm, "logit_scale": model.clip.logit_scale.exp().item(),
                                      "step_s": round(step_times[-1], 4)}) + "\n")
                log.flush()
        bar.close()

        record: dict[str, Any] = {"step": step, "epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if val_split is not None and info.main:
            last_val = evaluate(model, val_split, caches["val"], opts.eval_batch_size)
            record["val"] = last_val
            if best is None or last_val["rsum"] > best["val"]["rsum"]:
                best = {"epoch": epoch + 1, "step": step, "val": last_val}
                ts2net.save_model(model, out / "best", metadata={"epoch": str(epoch + 1), "step": str(step)})
            print(f"[train] epoch {epoch + 1}: train loss {record['train_loss']:.4f}; val {_metrics_line(last_val)}",
                  flush=True)
        history.append(record)
        rng = _gather_rng_states(info)
        if info.main:
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            save_state(state_path, options=_jsonable(dataclasses.asdict(opts)), config=cfg.to_dict(),
                       epoch=epoch + 1, step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), rng=rng, best=best, history=history,
                       wall_s=wall_before + time.perf_counter() - started)
        barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < opts.epochs:
            return {"stopped_after_epoch": epoch + 1, "step": step}

    summary = {
        "config": cfg.to_dict(), "options": _jsonable(dataclasses.asdict(opts)),
        "learning_rates": {"new_modules": lr, "clip": lr * clip_scale}, "warmup_steps": warmup,
        "world_size": info.world_size, "threads": torch.get_num_threads(),
        "train_clips": len(dataset), "train_hard_pairs": len(sampler.pairs),
        "train_captions": len(train_split.captions),
        "epochs": opts.epochs, "steps": step, "steps_per_epoch": steps_per_epoch,
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


def _group_lr(optimizer: torch.optim.Optimizer, tower: str) -> float | None:
    return next((g["lr"] for g in optimizer.param_groups if g["tower"] == tower), None)


def _optional_split(data: str, name: str, tokenizer, max_words: int):
    try:
        return load_split(data, name, tokenizer, max_words)
    except ValueError:
        return None


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# ============================================================================ CLI
@click.command(name="train")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Benchmark directory (MSRVTT_data.json + videos/), e.g. from python -m synthbench.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (model, log, checkpoints).")
@click.option("--preset", default=None, help="Config preset name (default: demo when neither --config nor --clip).")
@click.option("--config", "config", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TS2-Net config JSON instead of a preset.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Config override, repeatable (token_shift=false).")
@click.option("--clip", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Initialise from an OpenAI CLIP archive (ViT-B-32.pt) instead of from scratch.")
@click.option("--tokenizer", default=None, type=click.Path(exists=True, dir_okay=False),
              help="tokenizer.json or CLIP BPE vocabulary (default: CLIP's with --clip, else a caption BPE "
                   "trained here on the train captions).")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(2),
              help="Global batch (contrastive matrix size), split over processes. On CPU more, smaller steps "
                   "escape the early chance-level plateau sooner than fewer large ones (official: 128 on 8 GPUs).")
@click.option("--lr", default=None, type=float, help="LR of the new modules [1e-4 from CLIP, 5e-4 from scratch].")
@click.option("--clip-lr-scale", default=None, type=float,
              help="CLIP towers' LR = lr x this [1e-3 from CLIP, 1 from scratch].")
@click.option("--warmup-steps", default=None, type=click.IntRange(0), help="Linear warm-up steps [10% of all steps].")
@click.option("--weight-decay", default=0.2, show_default=True, type=float)
@click.option("--grad-clip", default=1.0, show_default=True, type=float, help="Max global grad norm (0: off).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch checkpoint.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
              help="DataLoader workers and video-decoding processes.")
@click.option("--max-train-clips", default=None, type=click.IntRange(1), help="Use only the first N training clips.")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch threads per process [cores / processes].")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Frame cache [DATA/.frame_cache].")
@click.option("--stop-after", default=None, type=click.IntRange(1), hidden=True,
              help="End after this many epochs, leaving a resumable checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(data, out, preset, config, sets, clip, tokenizer, epochs, batch_size, lr, clip_lr_scale,
                  warmup_steps, weight_decay, grad_clip, seed, resume, workers, max_train_clips, threads,
                  cache_dir, stop_after, quiet):
    """Train TS2-Net on a text-video benchmark (CPU; torchrun --nproc_per_node N for gloo DDP)."""
    opts = TrainOptions(data=data, out=out, preset=preset, config=config, sets=tuple(sets), clip=clip,
                        tokenizer=tokenizer, epochs=epochs, batch_size=batch_size, lr=lr, clip_lr_scale=clip_lr_scale,
                        warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                        resume=resume, workers=workers, max_train_clips=max_train_clips, threads=threads,
                        cache_dir=cache_dir, progress=not quiet)
    try:
        summary = run_training(opts, stop_after_epoch=stop_after)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary.get("final_val") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"[train] done: {summary['steps']} steps in {summary['wall_s']:.0f} s; "
                   f"final val {_metrics_line(summary['final_val'])}; model in {out}")


if __name__ == "__main__":
    train_command(prog_name="python -m ts2net.training.loop")
