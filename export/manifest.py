"""`manifest.json`: everything a program (Python or C++) needs to use a bundle.

Schema documented in docs/bundle-format.md; bump MANIFEST_VERSION on any incompatible change.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ts2net import TS2NetConfig
from runtime.files import atomic_write_text, sha256_file

FORMAT_NAME = "ts2net-bundle"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)




def file_entry(bundle: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"file": name, "sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size, **extra}


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ts2net-deploy", "torch", "onnx", "onnxruntime", "onnxslim", "numpy", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def preprocessing_facts(cfg: TS2NetConfig) -> dict[str, Any]:
    return {
        "image_size": cfg.image_size,
        "resize": "bicubic; short side -> image_size, long side -> int(image_size * long / short)",
        "crop": "center image_size x image_size, offset int((dim - image_size + 1) * 0.5) (rounded half up)",
        "scale": 1 / 255,
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
        "color": "RGB",
        "sampling": {"frames_per_second": 1, "fps_rule": "int(container fps)",
                     "frame_numbers": "int(s * fps) for s in 0..ceil(frame_count / fps) - 1"},
        "frame_slicing": "if more than max_frames samples: linspace(0, n - 1, max_frames).astype(int)",
        "max_frames": cfg.max_frames,
        "padding": "zero frames (normalized space) at the end, frame_mask 0",
    }


def similarity_facts(cfg: TS2NetConfig, logit_scale: float) -> dict[str, Any]:
    return {"logit_scale": logit_scale, "logit_scale_is_exponentiated": True,
            "frame_softmax_factor": cfg.frame_softmax_factor, "frame_mask_mode": cfg.frame_mask_mode,
            "tokens_per_frame": cfg.tokens_per_frame, "masked_frame_value": -1e18,
            "formula": "docs/bundle-format.md#similarity"}


def new_manifest(cfg: TS2NetConfig, logit_scale: float, source: dict[str, Any], tokenizer: dict[str, Any]
                 ) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valid": False,              # set True only after FP32 validation passes
        "model": cfg.to_dict(),
        "source_checkpoint": source,
        "preprocessing": preprocessing_facts(cfg),
        "tokenizer": tokenizer,
        "similarity": similarity_facts(cfg, logit_scale),
        "graphs": {},
        "engines": {},
        "reference": None,
        "parity": {},
        "tools": tool_versions(),
    }


def write_manifest(bundle: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(bundle) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {bundle} a bundle made by `ts2net export`?")
    return json.loads(path.read_text())
