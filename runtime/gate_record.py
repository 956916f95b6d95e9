"""Real-data gate outcomes recorded in the bundle, so the default path honours them.

`ts2net parity --csv --videos` measures the bf16 / int8 rows on the user's own data; a path that
fails there must not stay the default of `ts2net index` / `search` (runtime/path_choice.py). The
outcome goes into `manifest.json` under ``parity.real_data["<backend> <precision>"]``: an optional
entry (format version unchanged), outside the bundle id (which covers graphs, tokenizer and
preprocessing only), written under a lock and atomically so two parity runs cannot lose each
other's record and an interrupted write never leaves a broken manifest.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .files import atomic_write_text, waiting_lock

MANIFEST_NAME = "manifest.json"


def gate_summary(real: dict[str, Any]) -> dict[str, Any]:
    """The part of a real-data parity result worth keeping beside the bundle."""
    retrieval = real.get("retrieval") or {}
    keep = ("top1_agreement", "v2t_top1_agreement", "r1_delta_points", "r5_delta_points", "v2t_r1_delta_points",
            "v2t_r5_delta_points")
    return {"passed": not real.get("failures"), "failures": list(real.get("failures") or []),
            "annotations": real.get("annotations"), "n_captions": real.get("n_captions"),
            "n_videos": real.get("n_videos"), "figures": {k: retrieval[k] for k in keep if k in retrieval},
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def record_real_data_gate(bundle_dir: str | os.PathLike, backend: str, precision: str, real: dict[str, Any]) -> None:
    """Write the outcome of a real-data parity run into the bundle's manifest (locked, atomic)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    with waiting_lock(path.with_name(MANIFEST_NAME + ".lock")):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest.setdefault("parity", {}).setdefault("real_data", {})[f"{backend} {precision}"] = gate_summary(real)
        atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def real_data_failed(manifest: dict[str, Any], backend: str, precision: str) -> bool:
    """True when a recorded real-data run of this path failed its gates."""
    entry = ((manifest.get("parity") or {}).get("real_data") or {}).get(f"{backend} {precision}")
    return bool(entry) and entry.get("passed") is False


def real_data_passed(manifest: dict[str, Any], backend: str, precision: str) -> bool:
    """True when a recorded real-data run of this path passed its gates."""
    entry = ((manifest.get("parity") or {}).get("real_data") or {}).get(f"{backend} {precision}")
    return bool(entry) and entry.get("passed") is True
