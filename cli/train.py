"""`ts2net train` (thin wrapper over ts2net.training; torchrun -m cli train ... for gloo DDP)."""
from __future__ import annotations

import os

import click

from cli.errors import CommandError
from ts2net.training.distributed import shutdown
from ts2net.training import TrainOptions, run_training
from ts2net.training.validation import metrics_line


@click.command(name="train")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Benchmark directory (MSRVTT_data.json + videos/), e.g. from ts2net synthbench.")
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
@click.option("--pair-loss-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Add this x the 2x2 pair-contrastive loss of each hard pair in the batch (docs/demo.md).")
@click.option("--curriculum-pair-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="Train the first N epochs on the hard-pair clips only.")
@click.option("--pair-repeats", default=1, show_default=True, type=click.IntRange(1),
              help="Presentations of each hard pair per epoch (never twice in one batch).")
@click.option("--logit-scale", "logit_scale", default=None, metavar="START[:END]",
              help="Fix exp(logit scale) instead of learning it, linearly from START to END over the run.")
@click.option("--track-pairs-every", default=0, show_default=True, type=click.IntRange(0),
              help="Every N steps score train and test hard pairs by change type (RUN/pair_tracking.jsonl/.png).")
@click.option("--track-pairs-max", default=256, show_default=True, type=click.IntRange(1),
              help="At most this many pairs per tracked split.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(data, out, preset, config, sets, clip, tokenizer, epochs, batch_size, lr, clip_lr_scale,
                  warmup_steps, weight_decay, grad_clip, seed, resume, workers, max_train_clips, threads,
                  cache_dir, stop_after, pair_loss_weight, curriculum_pair_epochs, pair_repeats, logit_scale,
                  track_pairs_every, track_pairs_max, quiet):
    """Train TS2-Net on a text-video benchmark (CPU; torchrun --nproc_per_node N for gloo DDP)."""
    try:
        opts = TrainOptions(data=data, out=out, preset=preset, config=config, sets=tuple(sets), clip=clip,
                            tokenizer=tokenizer, epochs=epochs, batch_size=batch_size, lr=lr, clip_lr_scale=clip_lr_scale,
                            warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                            resume=resume, workers=workers, max_train_clips=max_train_clips, threads=threads,
                            cache_dir=cache_dir, progress=not quiet, pair_loss_weight=pair_loss_weight,
                            curriculum_pair_epochs=curriculum_pair_epochs, pair_repeats=pair_repeats,
                            logit_scale_schedule=_logit_scale(logit_scale), track_pairs_every=track_pairs_every,
                            track_pairs_max=track_pairs_max)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        summary = run_training(opts, stop_after_epoch=stop_after)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        shutdown()
    if summary.get("final_val") and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"[train] done: {summary['steps']} steps in {summary['wall_s']:.0f} s; "
                   f"final val {metrics_line(summary['final_val'])}; model in {out}")


def _logit_scale(text: str | None) -> tuple[float, float] | None:
    """"30" -> (30, 30); "10:100" -> (10, 100); None -> None (learnt)."""
    if text is None:
        return None
    start, _, end = text.partition(":")
    try:
        return float(start), float(end or start)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected START or START:END, e.g. 30 or 10:100",
                                 param_hint="--logit-scale") from None
