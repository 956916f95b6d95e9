"""FLOP counts of one item through a bundle's graphs, from its config alone (any backend)."""
from __future__ import annotations

from typing import Any, Mapping


def _block_macs(tokens: int, width: int) -> int:
    """Multiply-adds of one pre-LN transformer block on `tokens` tokens of `width` channels.

    q/k/v projection 3*W^2 and output projection W^2 per token, MLP W*4W + 4W*W per token
    (12 W^2 per token in all), plus the attention scores Q K^T and the weighted sum of V:
    tokens^2 * W each (summed over heads: heads * tokens^2 * head_dim = tokens^2 * W).
    """
    return 12 * tokens * width * width + 2 * tokens * tokens * width


def model_flops(config: Mapping[str, Any], graph: str) -> int:
    """FLOPs (2 x multiply-adds) of one item through a graph: one text, or one video of max_frames frames.

    Counted from the config alone, so it holds for any backend:

    text  = max_words tokens through text_layers blocks of text_width (the causal mask does not
            skip any product), then ln_final @ text_projection on all max_words tokens
            (the graph projects every position and picks the EOT row afterwards);
    video = per frame: conv1 (grid^2 patches x 3*patch^2 x vision_width), vision_layers blocks on
            N = grid^2 + 1 tokens of vision_width, ln_post @ proj on all N tokens (vision_width x
            embed_dim), and the token selector's score predictor on all N tokens (D x D/2,
            D x D/2, D/2 x 1, D = embed_dim); then per video the temporal transformer:
            temporal_layers blocks on max_frames * (top_k + 1) tokens of text_width.

    Only matrix products and the convolution are counted; LayerNorm, softmax, GELU, the token
    shift and residual adds are not (under 1% for ViT-B/32).
    """
    if graph == "text":
        tokens, width = int(config["max_words"]), int(config["text_width"])
        macs = int(config["text_layers"]) * _block_macs(tokens, width)
        macs += tokens * width * int(config["embed_dim"])
        return 2 * macs
    if graph != "video":
        raise ValueError(f"graph={graph!r}: expected 'text' or 'video'")
    grid = int(config["image_size"]) // int(config["patch_size"])
    patch, width, dim = int(config["patch_size"]), int(config["vision_width"]), int(config["embed_dim"])
    tokens = grid * grid + 1
    per_frame = grid * grid * 3 * patch * patch * width                 # conv1
    per_frame += int(config["vision_layers"]) * _block_macs(tokens, width)
    per_frame += tokens * width * dim                                     # ln_post @ proj
    selection = config.get("token_selection", True)
    if selection:
        per_frame += tokens * (dim * (dim // 2) + dim * (dim // 2) + dim // 2)  # score predictor
    kept = int(config["top_k"]) + 1 if selection else 1
    frames = int(config["max_frames"])
    temporal = int(config["temporal_layers"]) * _block_macs(frames * kept, int(config["text_width"]))
    return 2 * (frames * per_frame + temporal)
