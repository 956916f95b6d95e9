"""Writing `manifest.json`: everything a program (Python or C++) needs to use a bundle.

The format itself (names, version, keys, entry builders, schema) is owned by
`runtime/bundle_format.py` and documented in docs/bundle-format.md; this module assembles a new
manifest from a model config and writes it atomically.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.bundle_format import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, file_entry, preprocessing_facts,
                                   similarity_facts)
from runtime.files import atomic_write_text, sha256_file
from ts2net import TS2NetConfig

__all__ = ["file_entry", "new_manifest", "sha256_file", "tool_versions", "write_manifest"]


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("ts2net-deploy", "torch", "onnx", "onnxruntime", "onnxslim", "numpy", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_manifest(cfg: TS2NetConfig, logit_scale: float, source: dict[str, Any], tokenizer: dict[str, Any]
                 ) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
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
