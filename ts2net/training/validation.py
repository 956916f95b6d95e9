"""Validation during training: retrieval metrics of the model on a held-out split."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from runtime.metrics import retrieval_metrics, v2t_metrics
from ts2net.training.frame_cache import FrameCache, SplitVideos
from ts2net.model import TS2Net


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


def metrics_line(m: dict[str, Any]) -> str:
    return " ".join(f"{d} R@1/5/10 {m[d]['R1']:.1f}/{m[d]['R5']:.1f}/{m[d]['R10']:.1f} MdR {m[d]['MdR']:g}"
                    for d in ("t2v", "v2t"))
