"""Loading and saving TS2-Net weights, every key and shape checked.

Three formats (docs/semantics.md, row 9):
* official TS2-Net checkpoints `pytorch_model.bin.N`: a pickled state dict with `clip.`-prefixed
  CLIP keys; the attention of shifted blocks is stored as `attn.net.*`; fp16 CLIP weights are
  cast to fp32; unused official modules are accepted and ignored. No CLIP file is needed.
* OpenAI CLIP archives (TorchScript `ViT-B-32.pt`) or a plain state dict with the same keys:
  a fresh TS2-Net initialised the way official training starts.
* our own `model.safetensors` + `config.json` (a directory, or the .safetensors file with its
  config.json beside it).
Pickles load with `torch.load(weights_only=True)`; only TorchScript goes through `torch.jit.load`.
"""
from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from runtime.files import atomic_write_bytes

from .config import TS2NetConfig
from .model import TS2Net

log = logging.getLogger(__name__)

# Official modules that exist in checkpoints but play no part in inference (accepted, ignored).
IGNORED_OFFICIAL_PREFIXES = ("visual_prompt_encoder.", "text_token_selector.")
# Integer metadata entries of OpenAI CLIP archives.
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
SAFETENSORS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and every problem."""


# ---------------------------------------------------------------------------- reading files
def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Raw tensors of a pickled state dict or a TorchScript archive, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if _is_torchscript_archive(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoints
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {k: v for k, v in state.items()}


def detect_format(path: str | Path) -> str:
    """"safetensors", "official" (TS2-Net .bin) or "clip" (OpenAI CLIP weights)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return "safetensors"
    keys = read_state_dict(path).keys()
    return _format_of_keys(path, keys)


def _format_of_keys(path: Path, keys) -> str:
    if any(k.startswith("clip.") for k in keys):
        return "official"
    if "visual.conv1.weight" in keys and "token_embedding.weight" in keys:
        return "clip"
    sample = sorted(keys)[:5]
    raise CheckpointError(f"{path}: neither a TS2-Net checkpoint (keys 'clip.*') nor a CLIP ViT state dict "
                          f"(keys 'visual.conv1.weight', 'token_embedding.weight'); first keys: {sample}")


# ---------------------------------------------------------------------------- strict loading
def load_strict(model: TS2Net, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model` after checking keys and shapes; one error lists every problem."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or misshaped:
        parts = [f"{source}: weights do not fit the model ({model.cfg.name}, inferred sizes: "
                 f"vision {model.cfg.vision_width}x{model.cfg.vision_layers}, text "
                 f"{model.cfg.text_width}x{model.cfg.text_layers}, temporal {model.cfg.temporal_layers})"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"{len(items)} {title} key(s):\n    " + "\n    ".join(items))
        raise CheckpointError("\n  ".join(parts))
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(state[key].to(value.dtype))


def _official_to_ours(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    converted, ignored = {}, []
    for key, value in state.items():
        if key.startswith(IGNORED_OFFICIAL_PREFIXES) or key[len("clip."):] in CLIP_METADATA_KEYS:
            ignored.append(key)
            continue
        converted[key.replace(".attn.net.", ".attn.")] = value.float() if value.is_floating_point() else value
    if ignored:
        log.debug("%s: ignoring %d unused official entries (%s...)", path, len(ignored), ", ".join(ignored[:3]))
    return converted


def _clip_to_ours(model: TS2Net, clip_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official training start: CLIP towers from CLIP; frame positions and temporal blocks from the
    text tower (positional embedding, blocks 0..temporal_layers-1); the selector, and temporal
    blocks beyond the text tower's depth, keep their fresh initialisation."""
    state = {f"clip.{k}": v.float() for k, v in clip_state.items() if k not in CLIP_METADATA_KEYS}
    temporal = model.cfg.sim_header == "seqTransf"
    if temporal:
        state["frame_position_embeddings.weight"] = clip_state["positional_embedding"].float().clone()
    for key, value in clip_state.items():
        match = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
        if temporal and match and int(match.group(1)) < model.cfg.temporal_layers:
            state[f"transformerClip.resblocks.{match.group(1)}.{match.group(2)}"] = value.float().clone()
    for key, value in model.state_dict().items():
        if key.startswith(("visual_token_selector.", "transformerClip.")) and key not in state:
            state[key] = value
    return state


def _config_from_state(path: Path, state: Mapping[str, Any], prefix: str, values: dict[str, Any]) -> TS2NetConfig:
    """TS2NetConfig.from_state_dict, its errors prefixed with the checkpoint file they are about."""
    try:
        return TS2NetConfig.from_state_dict(state, prefix=prefix, **values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# ---------------------------------------------------------------------------- public API
def load_model(path: str | Path, **config_overrides: Any) -> TS2Net:
    """An eval-mode TS2Net from an official checkpoint, an OpenAI CLIP file or our safetensors.

    `config_overrides` replace config fields, e.g. `load_model(p, frame_mask_mode="fixed")`.
    Official checkpoints default to frame_mask_mode="official" (what they were trained under),
    models started from CLIP to "fixed".
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return _load_safetensors(path, config_overrides)
    state = read_state_dict(path)
    kind = _format_of_keys(path, state.keys())
    if kind == "official":
        state = _official_to_ours(state, path)
        cfg = _config_from_state(path, state, "clip.", {"frame_mask_mode": "official", "name": path.name,
                                                        **config_overrides})
        model = TS2Net(cfg)
        load_strict(model, state, str(path))
    else:
        # a model started from CLIP is one we train: the fixed frame mask is its default
        cfg = _config_from_state(path, state, "", {"frame_mask_mode": "fixed", "name": path.name,
                                                   **config_overrides})
        model = TS2Net(cfg)
        load_strict(model, _clip_to_ours(model, state), str(path))
    return model.eval()


def _load_safetensors(path: Path, overrides: Mapping[str, Any]) -> TS2Net:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / SAFETENSORS_NAME if path.is_dir() else path
    config = weights.parent / CONFIG_NAME
    for needed in (weights, config):
        if not needed.is_file():
            raise CheckpointError(f"{needed}: missing; our format is a directory holding "
                                  f"{SAFETENSORS_NAME} and {CONFIG_NAME} (see save_model)")
    cfg = TS2NetConfig.load(config)
    if overrides:
        cfg = cfg.replace(**overrides)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    model = TS2Net(cfg)
    load_strict(model, state, str(weights))
    return model.eval()


def save_model(model: TS2Net, directory: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` atomically into `directory`."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / SAFETENSORS_NAME, save(tensors, metadata=dict(metadata or {})))
    model.cfg.save(directory / CONFIG_NAME)
    return directory


def checkpoint_summary(path: str | Path) -> dict[str, Any]:
    """Name, format and sha256 of a checkpoint (what bundles record as their source)."""
    from runtime.files import sha256_file

    path = Path(path)
    target = path / SAFETENSORS_NAME if path.is_dir() else path
    return {"name": path.name, "format": detect_format(path), "sha256": sha256_file(target)}
