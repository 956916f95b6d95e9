"""One declarative spec per exported sub-graph (names, dtypes, named dynamic axes, examples).

The I/O contract (docs/bundle-format.md) lives here and nowhere else: export, the FP16 pass, the checker,
validation and the manifest all read these specs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ts2net import TS2Net, TS2NetConfig

BATCH = "batch"  # the one dynamic axis of every graph


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                      # numpy dtype name: "int64" / "float32"
    shape: tuple[int | str, ...]    # ints are fixed per bundle; strings are named dynamic axes

    def to_manifest(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str                                        # "text" / "video"
    wrapper: Callable[[TS2Net], nn.Module]          # module whose forward is exactly the graph
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example_batch: int = 2                           # batch used for tracing (not 1, so batch stays dynamic)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs}

    @property
    def declared_axes(self) -> set[str]:
        return {d for axes in self.dynamic_axes.values() for d in axes.values()}


class TextGraph(nn.Module):
    def __init__(self, model: TS2Net):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class VideoGraph(nn.Module):
    def __init__(self, model: TS2Net):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor):
        frame_embeds, patch_indices = self.model.encode_video(frames, frame_mask)
        return (frame_embeds, patch_indices) if patch_indices is not None else frame_embeds


def graph_specs(cfg: TS2NetConfig) -> dict[str, GraphSpec]:
    size, frames, dim = cfg.image_size, cfg.max_frames, cfg.embed_dim
    video_outputs = [TensorSpec("frame_embeds", "float32", (BATCH, frames, dim))]
    if cfg.token_selection:
        video_outputs.append(TensorSpec("patch_indices", "int64", (BATCH, frames, cfg.top_k)))
    return {
        "text": GraphSpec("text", TextGraph,
                          inputs=(TensorSpec("input_ids", "int64", (BATCH, cfg.max_words)),),
                          outputs=(TensorSpec("text_embeds", "float32", (BATCH, dim)),)),
        "video": GraphSpec("video", VideoGraph,
                           inputs=(TensorSpec("frames", "float32", (BATCH, frames, 3, size, size)),
                                   TensorSpec("frame_mask", "int64", (BATCH, frames))),
                           outputs=tuple(video_outputs)),
    }


def example_inputs(spec: GraphSpec, batch: int, vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Valid inputs of the spec's shapes (text: SOT ... EOT 0-padded, with SOT/EOT the two highest
    ids as in CLIP; video: some padded frames)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for tensor in spec.inputs:
        shape = [batch if isinstance(d, str) else d for d in tensor.shape]
        if tensor.name == "input_ids":
            ids = torch.zeros(shape, dtype=torch.int64)
            words = torch.randint(1, vocab_size - 2, (batch, 3), generator=gen)
            ids[:, 0], ids[:, 1:4], ids[:, 4] = vocab_size - 2, words, vocab_size - 1
            tensors.append(ids)
        elif tensor.name == "frame_mask":
            mask = torch.ones(shape, dtype=torch.int64)
            mask[0, shape[1] // 2:] = 0
            tensors.append(mask)
        else:
            tensors.append(torch.randn(shape, generator=gen))
    return tuple(tensors)
