"""Fixed reference inputs and their PyTorch FP32 outputs (`reference.npz`).

With them any machine can check a bundle's parity without torch: several videos with different
numbers of valid frames (all, all but one, five, one), and captions including one longer than
max_words, so padding, truncation and both frame-mask modes are exercised.
"""
from __future__ import annotations

import numpy as np
import torch

from ts2net import TS2Net

REFERENCE_CAPTIONS = (
    "a man is driving a car down the road",
    "a small red circle moves to the left",
    "a large blue square grows while a tiny yellow star stays still on a striped background",
    "two people are talking in a kitchen",
    "someone is playing a guitar on stage",
    "a cartoon dog runs across a field and jumps over a fence " * 3,   # longer than max_words
)


def reference_video_inputs(model: TS2Net, videos: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random normalized frames with zero padding; valid counts cycle T, T-1, 5, 1, ..."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((videos, cfg.max_frames, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    # smooth the noise a little so patches differ in content the way image patches do
    frames = (frames + np.roll(frames, 1, axis=-1) + np.roll(frames, 1, axis=-2)) / 3
    counts = [cfg.max_frames, max(cfg.max_frames - 1, 1), min(5, cfg.max_frames), 1]  # max_frames 1: all 1
    mask = np.zeros((videos, cfg.max_frames), dtype=np.int64)
    for row in range(videos):
        valid = counts[row % len(counts)]
        mask[row, :valid] = 1
        frames[row, valid:] = 0.0
    return frames.astype(np.float32), mask


@torch.no_grad()
def reference_outputs(model: TS2Net, input_ids: np.ndarray, frames: np.ndarray, frame_mask: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """PyTorch FP32 outputs (hard top-K) on the reference inputs, plus the similarity matrix."""
    model = model.eval().float()
    ids, video, mask = torch.from_numpy(input_ids), torch.from_numpy(frames), torch.from_numpy(frame_mask)
    text = model.encode_text(ids)
    frame_embeds, patch_indices = model.encode_video(video, mask)
    out = {"input_ids": input_ids, "frames": frames, "frame_mask": frame_mask,
           "text_embeds": text.numpy(), "frame_embeds": frame_embeds.numpy(),
           "similarity": model.similarity(text, frame_embeds, mask).numpy()}
    if patch_indices is not None:
        out["patch_indices"] = patch_indices.numpy()
    return out
