"""The training objective: symmetric cross-entropy over the logit-scaled B x B batch similarity."""
from __future__ import annotations

import math

import torch
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
