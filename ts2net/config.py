"""Typed configuration of a TS2-Net model.

Sizes of the CLIP towers are normally *inferred* from a checkpoint's tensor shapes
(`TS2NetConfig.from_state_dict`), so ViT-B/32, ViT-B/16 and any smaller CLIP-shaped model load
without a hand-written config; JSON presets exist for the two standard sizes and a tiny test model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from runtime.bundle_format import FRAME_MASK_MODES

#: Temporal heads, named as in the official code (CLIP4Clip's `--sim_header`): "seqTransf" (TS2-Net's:
#: frame positions + temporal transformer over each frame's kept tokens) and "meanP" (CLIP4Clip's
#: parameter-free mean of the normalised frame CLS embeddings; the ablation baseline).
SIM_HEADERS = ("seqTransf", "meanP")


@dataclass
class TS2NetConfig:
    # --- CLIP vision tower (ViT) ---
    image_size: int = 224          # input frame side in pixels (square, after resize + center crop)
    patch_size: int = 32           # conv1 kernel = stride; grid G = image_size // patch_size
    vision_width: int = 768        # Wv, residual width of the visual transformer
    vision_layers: int = 12        # number of visual residual blocks
    # --- CLIP text tower ---
    vocab_size: int = 49408        # rows of token_embedding
    context_length: int = 77       # rows of the text positional embedding (and of the frame position table)
    text_width: int = 512          # Wt, residual width of the text transformer (= embed_dim)
    text_layers: int = 12          # number of text residual blocks
    embed_dim: int = 512           # D, joint embedding size (columns of text_projection / visual.proj)
    # --- TS2-Net parts ---
    shift_layers: tuple[int, ...] | None = None  # 0-based visual blocks with token shift; None = last two
    shift_fold_div: int = 7        # fold = N // shift_fold_div: stride between shifted token positions
    top_k: int = 3                 # K patch tokens selected per frame (the CLS token is always kept too)
    temporal_layers: int = 4       # blocks of the temporal transformer (transformerClip)
    sim_header: str = "seqTransf"  # "seqTransf" (TS2-Net) or "meanP" (CLIP4Clip mean pooling, no temporal module)
    max_frames: int = 12           # T, frames per video (padded frames included)
    max_words: int = 32            # L, text length including SOT and EOT
    frame_softmax_factor: float = 4.0  # the "4" in softmax(4 * u) over frames (similarity)
    frame_mask_mode: str = "fixed"  # "official" (tiled-mask quirk) or "fixed": docs/semantics.md row 6
    perturbed_samples: int = 500   # noisy copies of the scores in the training-time perturbed top-K
    perturbed_sigma: float = 0.05  # noise scale of the perturbed top-K
    perturbed_gradient: str = "full"  # "full" (Berthet et al.) or "diagonal" (the official code's einsum)
    token_shift: bool = True       # ablation switch: False disables the shift in every block
    token_selection: bool = True   # ablation switch: False keeps only the CLS token of each frame
    name: str = "custom"           # free-form label, written into bundles and reports

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        """N = G*G + 1: the CLS token plus one token per patch."""
        return self.grid * self.grid + 1

    @property
    def tokens_per_frame(self) -> int:
        """M: tokens each frame contributes to the temporal transformer."""
        return self.top_k + 1 if self.token_selection else 1

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64

    @property
    def text_heads(self) -> int:
        return self.text_width // 64

    @property
    def resolved_shift_layers(self) -> tuple[int, ...]:
        if not self.token_shift:
            return ()
        if self.shift_layers is None:
            return tuple(range(max(0, self.vision_layers - 2), self.vision_layers))
        return tuple(self.shift_layers)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TS2NetConfig":
        """Raise one ValueError listing every inconsistent field (with the fix), else return self."""
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        for name in ("vision_width", "text_width"):
            width = getattr(self, name)
            if width < 64 or width % 64:
                problems.append(f"{name}={width} must be a positive multiple of 64 (heads = width // 64)")
        if self.embed_dim != self.text_width:
            problems.append(f"embed_dim={self.embed_dim} must equal text_width={self.text_width}: the temporal "
                            "transformer (text-tower width) runs on the projected visual tokens")
        if self.tokens_per_image // self.shift_fold_div < 1 and self.resolved_shift_layers:
            problems.append(f"{self.tokens_per_image} tokens per frame are too few for shift_fold_div="
                            f"{self.shift_fold_div}; use a finer grid or token_shift=false")
        for layer in self.resolved_shift_layers:
            if not 0 <= layer < self.vision_layers:
                problems.append(f"shift layer {layer} outside 0..{self.vision_layers - 1}")
        if self.token_selection and not 1 <= self.top_k <= self.tokens_per_image - 1:
            problems.append(f"top_k={self.top_k} must be in 1..{self.tokens_per_image - 1} (patches per frame)")
        if self.max_frames < 1:
            problems.append(f"max_frames={self.max_frames} must be >= 1 (frames per video)")
        if self.max_frames * self.tokens_per_frame > self.context_length:
            problems.append(f"max_frames*tokens_per_frame={self.max_frames * self.tokens_per_frame} exceeds the "
                            f"{self.context_length}-row frame position table; lower max_frames or top_k")
        if not 3 <= self.max_words <= self.context_length:
            problems.append(f"max_words={self.max_words} must be in 3..{self.context_length}")
        if self.frame_mask_mode not in FRAME_MASK_MODES:
            problems.append(f"frame_mask_mode={self.frame_mask_mode!r}: expected one of {FRAME_MASK_MODES}")
        if self.sim_header not in SIM_HEADERS:
            problems.append(f"sim_header={self.sim_header!r}: expected one of {SIM_HEADERS}")
        elif self.sim_header == "meanP" and self.token_selection:
            problems.append("sim_header='meanP' pools only the frame CLS tokens, so the selected tokens would be "
                            "discarded; set token_selection=false or use sim_header='seqTransf'")
        if self.perturbed_gradient not in ("full", "diagonal"):
            problems.append(f"perturbed_gradient={self.perturbed_gradient!r}: expected 'full' or 'diagonal'")
        if problems:
            raise ValueError("invalid TS2-Net config:\n  - " + "\n  - ".join(problems))
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["shift_layers"] is not None:
            data["shift_layers"] = list(data["shift_layers"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TS2NetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {unknown}; known fields: {sorted(known)}")
        values = dict(data)
        if values.get("shift_layers") is not None:
            values["shift_layers"] = tuple(int(i) for i in values["shift_layers"])
        return cls(**values).validate()

    def replace(self, **overrides: Any) -> "TS2NetConfig":
        return TS2NetConfig.from_dict({**self.to_dict(), **overrides}, source="config overrides")

    def save(self, path: str | Path) -> None:
        from runtime.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TS2NetConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read a TS2-Net config JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def preset(cls, preset_name: str, /, **overrides: Any) -> "TS2NetConfig":
        """A named preset from `ts2net/presets/` (e.g. "vit-b-32", "vit-b-16", "tiny")."""
        name = preset_name
        available = sorted(p.name[:-5] for p in resources.files("ts2net.presets").iterdir()
                           if p.name.endswith(".json"))
        if name not in available:
            raise ValueError(f"unknown preset {name!r}; available: {available}")
        data = json.loads(resources.files("ts2net.presets").joinpath(f"{name}.json").read_text())
        data.update(overrides)
        return cls.from_dict(data, source=f"preset {name}")

    # ------------------------------------------------------------------ inference from weights
    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], prefix: str = "", **overrides: Any) -> "TS2NetConfig":
        """Infer the CLIP tower sizes from tensor shapes (docs/semantics.md, row 9).

        `prefix` is "clip." for TS2-Net checkpoints and "" for OpenAI CLIP state dicts.
        """
        def shape(key: str) -> tuple[int, ...]:
            if prefix + key not in state:
                raise ValueError(f"cannot infer model size: key {prefix + key!r} is missing "
                                 "(is this a CLIP ViT / TS2-Net checkpoint?)")
            return tuple(state[prefix + key].shape)

        visual_blocks = {m.group(1) for k in state
                         if (m := re.match(re.escape(prefix) + r"visual\.transformer\.resblocks\.(\d+)\.", k))}
        text_blocks = {m.group(1) for k in state
                       if (m := re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.", k))}
        width, _, patch, _ = shape("visual.conv1.weight")
        grid = math.isqrt(shape("visual.positional_embedding")[0] - 1)
        values: dict[str, Any] = dict(
            image_size=grid * patch, patch_size=patch, vision_width=width, vision_layers=len(visual_blocks),
            vocab_size=shape("token_embedding.weight")[0], context_length=shape("positional_embedding")[0],
            text_width=shape("ln_final.weight")[0], text_layers=len(text_blocks),
            embed_dim=shape("text_projection")[1],
        )
        temporal = {m.group(1) for k in state if (m := re.match(r"transformerClip\.resblocks\.(\d+)\.", k))}
        if temporal:
            values["temporal_layers"] = len(temporal)
        elif prefix and "frame_position_embeddings.weight" not in state:
            # a TS2-Net / CLIP4Clip checkpoint without a temporal module was trained with meanP
            values.update(sim_header="meanP", token_selection=False)
        values.update(overrides)
        return cls.from_dict(values, source="inferred config")
