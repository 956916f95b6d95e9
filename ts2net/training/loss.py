"""The training objective: symmetric cross-entropy over the logit-scaled B x B batch similarity,
plus, optionally, a pair-contrastive term over each hard pair's 2 x 2 block (`pair_contrastive_loss`)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ts2net.config import TS2NetConfig
from ts2net.model import TS2Net, contrastive_loss, effective_frame_mask, frame_weighted_similarity
from .distributed import gather_no_grad, gather_with_grad

LOGIT_SCALE_MAX = math.log(100.0)  # CLIP's clamp: a temperature below 1/100 only destabilises training


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


def batch_similarity(embed: nn.Module, cfg: TS2NetConfig, input_ids: torch.Tensor, frames: torch.Tensor,
                     frame_mask: torch.Tensor) -> torch.Tensor:
    """The [B, B] logit-scaled similarity of the whole (all-gathered) batch, texts in rows.

    The same similarity code as `TS2Net.forward` (`frame_weighted_similarity` on the effective
    frame mask, in float32), on the concatenation of every process's batch.
    """
    text, frame_embeds, logit_scale = embed(input_ids, frames, frame_mask)
    text, frame_embeds = gather_with_grad(text), gather_with_grad(frame_embeds)
    mask = effective_frame_mask(gather_no_grad(frame_mask), cfg.tokens_per_frame, cfg.frame_mask_mode)
    return frame_weighted_similarity(text.float(), frame_embeds.float(), mask, logit_scale,
                                     cfg.frame_softmax_factor)


def batch_loss(embed: nn.Module, cfg: TS2NetConfig, input_ids: torch.Tensor, frames: torch.Tensor,
               frame_mask: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over the similarity of the whole (all-gathered) batch (the official loss)."""
    return contrastive_loss(batch_similarity(embed, cfg, input_ids, frames, frame_mask))


def pair_contrastive_loss(sim: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean over hard pairs of the symmetric cross-entropy of the pair's 2 x 2 block of `sim`.

    `pairs` is int64 [P, 2]: batch positions (a, b) of the two members of each pair. The block
    [[s(ta, va), s(ta, vb)], [s(tb, va), s(tb, vb)]] asks each caption to pick its own clip of the
    two and each clip its own caption. Why a separate term: in the B x B loss the pair is one
    confusion among B - 1 negatives, and at the plateau (every scene recognised, the two members
    indistinguishable: loss ln 2) the model can lower the rest of the loss by pulling the two
    captions together. This block cannot be satisfied that way: with equal captions (or equal
    clips) its rows (columns) are equal and the term is exactly ln 2, whatever else is learnt, so
    its gradient always pushes the two caption embeddings (and clip embeddings) apart.
    """
    if pairs.numel() == 0:
        return sim.new_zeros(())
    block = sim[pairs[:, :, None], pairs[:, None, :]]                     # [P, 2, 2]: texts x videos
    target = torch.tensor([0, 1], device=sim.device).repeat(pairs.shape[0])
    t2v = F.cross_entropy(block.reshape(-1, 2), target)
    v2t = F.cross_entropy(block.transpose(1, 2).reshape(-1, 2), target)
    return (t2v + v2t) / 2


def pair_positions(clips: Sequence[int], partner: np.ndarray) -> torch.Tensor:
    """int64 [P, 2]: positions (a < b) in a batch of clip indices `clips` of the hard pairs it holds whole."""
    where = {int(c): k for k, c in enumerate(clips)}
    found = [(k, where[int(partner[c])]) for k, c in enumerate(clips)
             if partner[c] >= 0 and where.get(int(partner[c]), -1) > k]
    return torch.tensor(found, dtype=torch.int64).reshape(-1, 2)


def batch_objective(embed: nn.Module, cfg: TS2NetConfig, input_ids: torch.Tensor, frames: torch.Tensor,
                    frame_mask: torch.Tensor, pairs: torch.Tensor | None = None,
                    pair_loss_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss: `batch_loss` + pair_loss_weight x `pair_contrastive_loss`, and its parts.

    `pairs` are positions in the all-gathered batch. With weight 0 it is exactly `batch_loss`.
    """
    sim = batch_similarity(embed, cfg, input_ids, frames, frame_mask)
    clip_loss = contrastive_loss(sim)
    parts = {"clip_loss": clip_loss.item()}
    if pair_loss_weight and pairs is not None and pairs.numel():
        pair_loss = pair_contrastive_loss(sim, pairs)
        parts["pair_loss"] = pair_loss.item()
        return clip_loss + pair_loss_weight * pair_loss, parts
    return clip_loss, parts
