"""AdamW parameter groups (CLIP towers vs the modules TS2-Net adds) and the warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch

from ts2net.model import TS2Net
from .options import TrainOptions

#: Parameters outside the CLIP towers: the modules TS2-Net adds (they get the full learning rate).
NEW_MODULE_PREFIXES = ("frame_position_embeddings.", "transformerClip.", "visual_token_selector.")
CLIP_PREFIX = "clip."


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
