"""Real-data gate outcomes recorded in the bundle, so the default path honours them.

`ts2net parity --csv --videos` measures the bf16 / int8 rows on the user's own data; a path that
fails there must not stay the default of `ts2net index` / `search` (runtime/path_choice.py). The
outcome goes into `manifest.json` under ``parity.real_data[path_key(...)]`` ("openvino bf16", or
"openvino bf16 text=fp32" where the text graph runs another precision than the video graph): an optional
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


def path_key(backend: str, precision: str, text_precision: str | None = None) -> str:
    """The record key of a path: "<backend> <precision>", plus " text=<p>" when the text graph differs.

    text_precision None means the path's default (runtime.path_choice.default_text_precision), so
    the default bf16 / int8 CPU paths are "openvino bf16 text=fp32" and a run that asked for a bf16
    text graph too is recorded apart from them, as "openvino bf16".
    """
    from .path_choice import default_text_precision

    text = default_text_precision(backend, precision) if text_precision is None else text_precision
    return f"{backend} {precision}" + (f" text={text}" if text not in (None, precision) else "")


def record_real_data_gate(bundle_dir: str | os.PathLike, backend: str, precision: str, real: dict[str, Any],
                          text_precision: str | None = None) -> None:
    """Write the outcome of a real-data parity run into the bundle's manifest (locked, atomic)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    key = path_key(backend, precision, text_precision)
    with waiting_lock(path.with_name(MANIFEST_NAME + ".lock")):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest.setdefault("parity", {}).setdefault("real_data", {})[key] = gate_summary(real)
        atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _entry(manifest: dict[str, Any], backend: str, precision: str, text_precision: str | None) -> dict[str, Any]:
    return ((manifest.get("parity") or {}).get("real_data") or {}).get(path_key(backend, precision,
                                                                                text_precision)) or {}


def real_data_failed(manifest: dict[str, Any], backend: str, precision: str, text_precision: str | None = None) -> bool:
    """True when a recorded real-data run of this path failed its gates."""
    return _entry(manifest, backend, precision, text_precision).get("passed") is False


def real_data_passed(manifest: dict[str, Any], backend: str, precision: str, text_precision: str | None = None) -> bool:
    """True when a recorded real-data run of this path passed its gates."""
    return _entry(manifest, backend, precision, text_precision).get("passed") is True
