"""What a training run is asked to do (`TrainOptions`), and the model and tokenizer it starts from."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


import ts2net
from runtime.tokenizer import ClipTokenizer, find_bpe_vocab, load_tokenizer
from ts2net.config import TS2NetConfig
from ts2net.model import TS2Net
from ts2net.training.tokenizer import DEFAULT_VOCAB_SIZE, train_caption_tokenizer
from .distributed import barrier

LOG_NAME, SUMMARY_NAME, TOKENIZER_NAME = "train_log.jsonl", "train_summary.json", "tokenizer.json"


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
    # ---- levers against the hard-pair plateau (docs/demo.md, "What was tried"); defaults = the plain recipe
    pair_loss_weight: float = 0.0       # x the mean 2 x 2 pair-contrastive loss of the batch's hard pairs
    curriculum_pair_epochs: int = 0     # the first E epochs use only the hard-pair clips
    pair_repeats: int = 1               # presentations of each hard pair per epoch
    logit_scale_schedule: tuple[float, float] | None = None  # fixed exp(logit scale), start -> end linearly
    # ---- measurement only (no effect on the weights)
    track_pairs_every: int = 0          # score train/test hard pairs by change type every N steps (0: off)
    track_pairs_max: int = 256          # at most this many pairs per tracked split

    def __post_init__(self) -> None:
        if self.pair_loss_weight < 0:
            raise ValueError(f"--pair-loss-weight {self.pair_loss_weight}: must be >= 0")
        if self.logit_scale_schedule is not None:
            start, end = (float(v) for v in self.logit_scale_schedule)
            if not (0 < start <= 100 and 0 < end <= 100):
                raise ValueError(f"--logit-scale {start:g}:{end:g}: both ends must be in (0, 100] "
                                 "(exp of the logit scale; CLIP clamps it at 100)")
            self.logit_scale_schedule = (start, end)

    def logit_scale_at(self, step: int, total_steps: int) -> float | None:
        """The scheduled exp(logit scale) for optimisation step `step` (0-based); None: learnt."""
        if self.logit_scale_schedule is None:
            return None
        start, end = self.logit_scale_schedule
        return start + (end - start) * min(1.0, step / max(1, total_steps - 1))

    def learning_rates(self) -> tuple[float, float]:
        lr = self.lr if self.lr is not None else (1e-4 if self.clip else 5e-4)
        scale = self.clip_lr_scale if self.clip_lr_scale is not None else (1e-3 if self.clip else 1.0)
        return lr, scale


#: Options that change the result: a resumed run must be given the same ones.
RESULT_OPTIONS = ("data", "preset", "config", "sets", "clip", "tokenizer", "epochs", "batch_size", "lr",
                  "clip_lr_scale", "warmup_steps", "weight_decay", "grad_clip", "seed", "max_train_clips",
                  "pair_loss_weight", "curriculum_pair_epochs", "pair_repeats", "logit_scale_schedule")


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
