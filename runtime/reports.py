"""Writing run reports: one JSON file with every number, one Markdown summary, the environment.

Numbers without the machine they came from cannot be compared, so every report carries
`environment()` (CPU model and cores, GPUs, library versions). Files are written atomically
(temporary file + rename): an interrupted run never leaves a half-written report that a later
comparison would read.

Library versions come from package metadata, so describing the environment never imports
torch or TensorRT.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_bytes
from .gpu import gpus

LIBRARIES = ("ts2net-deploy", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "polygraphy",
             "tokenizers", "av", "torch", "click", "matplotlib")





def format_number(value: Any, spec: str = ".1f", small_spec: str | None = None, missing: str = "-") -> str:
    """One number as a report writes it (the one formatting helper of the reports).

    None -> `missing`; a float with `spec`, or with `small_spec` when 0 < |value| < 0.05 (so a small
    figure does not print as 0.0); anything else (ints, strings, bools) as `str(value)`.
    """
    if value is None:
        return missing
    if isinstance(value, float):
        small = small_spec is not None and value != 0 and abs(value) < 0.05
        return format(value, small_spec if small else spec)
    return str(value)

def jsonable(value: Any) -> Any:
    """Plain JSON data from report values: numpy scalars/arrays, paths, dataclasses and sets are
    converted, dict keys become strings, and NaN/inf become null (not JSON; never an unreadable file)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(v) for v in sorted(value)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to a JSON report")


def write_report(out_dir: str | os.PathLike, stem: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """Write `{stem}.json` (data, plus an "environment" entry when data has none) and `{stem}.md`."""
    out = Path(out_dir)
    payload = dict(data)
    if "environment" not in payload:
        payload["environment"] = environment()
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False)
    json_path = atomic_write_bytes(out / f"{stem}.json", (text + "\n").encode())
    md_path = atomic_write_bytes(out / f"{stem}.md", (markdown.rstrip() + "\n").encode())
    return json_path, md_path


# ------------------------------------------------------------------------------ environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """SIMD features that decide CPU GEMM speed (AVX2 / AVX-512 / AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                                         "avx512_fp16", "amx_tile", "amx_bf16", "f16c"})
    except OSError:
        pass
    return []


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    versions = {}
    for package in LIBRARIES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict[str, Any]:
    """The machine and software a report's numbers were measured on."""
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"model": _cpu_model(), "machine": platform.machine(), "usable_cores": usable_cores(),
                "logical_cpus": os.cpu_count(), "simd": cpu_flags()},
        "memory_gib": _memory_gib(),
        # other processes competing for the cores make every timing slower: record how busy the machine was
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpus": list(gpus()),
        "libraries": library_versions(),
    }


def environment_markdown(env: dict[str, Any]) -> str:
    """Two lines a reader needs to judge the numbers."""
    cpu = env["cpu"]
    gpu = ", ".join(f"{g['name']} (sm {g['compute_capability']})" for g in env["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    return (f"- CPU: {cpu['model']}, {cpu['usable_cores']} usable cores, SIMD {'/'.join(cpu['simd']) or '?'}; "
            f"memory {env['memory_gib']} GiB; GPU: {gpu}; load average (1 min) {env.get('load_average_1m')}\n- Python {env['python']}; {libs}\n")
