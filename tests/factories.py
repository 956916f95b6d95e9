"""Tiny models and checkpoint files in the three formats users bring (no downloads)."""
from __future__ import annotations

from pathlib import Path

import torch

import ts2net
from ts2net.config import TS2NetConfig

# A 12-layer tiny model, so the official checkpoint layout (shift in blocks 10 and 11) is exercised.
TINY12 = dict(name="tiny12", image_size=32, patch_size=8, vision_width=64, vision_layers=12,
              text_width=64, text_layers=2, embed_dim=64, temporal_layers=2)


def tiny_config(**overrides) -> TS2NetConfig:
    return TS2NetConfig.preset("tiny", **overrides)


def random_model(cfg: TS2NetConfig, seed: int = 0) -> ts2net.TS2Net:
    """A random model whose LayerNorms and selector are perturbed too, so every weight matters."""
    torch.manual_seed(seed)
    model = ts2net.TS2Net(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name or "in_conv.0" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def round_clip_to_fp16(model: ts2net.TS2Net) -> ts2net.TS2Net:
    """Round the weights official checkpoints store in fp16, so a save/load round trip is exact."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _stored_fp16(name):
                param.copy_(param.half().float())
    return model


def round_all_clip_to_fp16(model: ts2net.TS2Net) -> ts2net.TS2Net:
    """OpenAI CLIP archives store every CLIP tensor in fp16."""
    with torch.no_grad():
        for param in model.clip.parameters():
            param.copy_(param.half().float())
    return model


def _stored_fp16(key: str) -> bool:
    """Which CLIP weights the official code converts to fp16 (convert_weights): conv, linear and
    attention weights/biases, visual.proj and text_projection."""
    if not key.startswith("clip."):
        return False
    return (key.endswith(("conv1.weight", "in_proj_weight", "in_proj_bias", "visual.proj", "text_projection"))
            or ".out_proj." in key or ".mlp.c_fc." in key or ".mlp.c_proj." in key)


def official_state_dict(model: ts2net.TS2Net) -> dict[str, torch.Tensor]:
    """The key layout of an official `pytorch_model.bin.N` (docs/semantics.md, row 9)."""
    cfg = model.cfg
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if (key.startswith("clip.visual.transformer.resblocks.") and int(parts[4]) in cfg.resolved_shift_layers
                and parts[5] == "attn"):
            key = key.replace(".attn.", ".attn.net.")
        state[key] = value.half() if _stored_fp16(key) else value.clone()
    # unused official modules, accepted and ignored by our loader
    state["visual_prompt_encoder.conv1.weight"] = torch.randn(cfg.vision_width, cfg.vision_width, 3, 3)
    state["text_token_selector.score_predictor.in_conv.0.weight"] = torch.randn(cfg.embed_dim)
    return state


def clip_state_dict(model: ts2net.TS2Net) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP-style state dict (no prefix, fp16) from the model's CLIP towers."""
    state = {k[len("clip."):]: v.half() for k, v in model.state_dict().items() if k.startswith("clip.")}
    state["logit_scale"] = state["logit_scale"].float()
    return state


class _ClipArchive(torch.nn.Module):
    """Holds CLIP tensors under OpenAI's names so torch.jit can write a TorchScript archive."""

    def __init__(self, state: dict[str, torch.Tensor], cfg: TS2NetConfig):
        super().__init__()
        for key, value in state.items():
            owner = self
            *path, leaf = key.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        for name, value in (("input_resolution", cfg.image_size), ("context_length", cfg.context_length),
                            ("vocab_size", cfg.vocab_size)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def write_clip_torchscript(model: ts2net.TS2Net, path: Path) -> Path:
    """A TorchScript archive whose state dict looks like OpenAI's ViT-B-32.pt (int metadata included)."""
    torch.jit.save(torch.jit.trace(_ClipArchive(clip_state_dict(model), model.cfg), torch.zeros(1)), str(path))
    return path
