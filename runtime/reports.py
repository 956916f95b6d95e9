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
import shutil
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_bytes

LIBRARIES = ("ts2net-deploy", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "polygraphy",
             "tokenizers", "av", "torch", "click", "matplotlib")




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


def _cpu_flags() -> list[str]:
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


@lru_cache(maxsize=1)
def gpus() -> tuple[dict[str, Any], ...]:
    """GPUs visible to this process: name, compute capability, driver, memory. Empty without NVIDIA tools.

    Asks nvidia-smi (no CUDA library needed in this process); if it is missing or too old to
    report the compute capability, asks the CUDA driver library directly.
    """
    found: list[dict[str, Any]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                for line in out.stdout.strip().splitlines():
                    name, cap, driver, memory = [p.strip() for p in line.split(",")]
                    found.append({"name": name, "compute_capability": cap, "driver": driver,
                                  "memory_mib": int(float(memory)) if memory.replace(".", "").isdigit() else None})
        except (OSError, subprocess.SubprocessError, ValueError):
            found = []
    if not found or any(not g["compute_capability"][:1].isdigit() for g in found):
        driver = _cuda_driver_gpus()
        if driver:
            found = driver
    return tuple(found)


def _cuda_driver_gpus() -> list[dict[str, Any]]:
    """Name and compute capability through libcuda (cuDeviceGetName / cuDeviceGetAttribute)."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    if cuda.cuInit(0) != 0:
        return []
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    result = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        cuda.cuDeviceGetName(name, 256, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
        result.append({"name": name.value.decode(errors="replace"),
                       "compute_capability": f"{major.value}.{minor.value}", "driver": None, "memory_mib": None})
    return result


def cuda_device_zero() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0: the GPU TensorRT builds for and runs on.

    Asked of the CUDA driver API (libcuda), which honours ``CUDA_VISIBLE_DEVICES`` and CUDA's
    device order exactly as TensorRT does. nvidia-smi is only the fallback (a machine with a
    driver but no loadable libcuda): it lists GPUs in PCI order and ignores
    ``CUDA_VISIBLE_DEVICES``, so its row is chosen by the first entry of that variable when it is
    a plain index, and it is absent in containers run with only the ``compute`` capability.
    None when neither finds a GPU. Not cached: the answer may change with the environment.
    """
    driver = _cuda_driver_gpus()
    if driver:
        return {"name": driver[0]["name"], "compute_capability": driver[0]["compute_capability"],
                "source": "cuda driver"}
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",", 1) for line in out.stdout.strip().splitlines() if "," in line] if out.returncode == 0 else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if not first.isdigit():  # "" hides every GPU; UUIDs / MIG names cannot be mapped to rows here
            return None
        index = int(first)
        return _smi_row(rows[index]) if index < len(rows) else None
    return _smi_row(rows[0]) if rows else None


def _smi_row(row: list[str]) -> dict[str, Any]:
    return {"name": row[0].strip(), "compute_capability": row[1].strip(), "source": "nvidia-smi"}


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
                "logical_cpus": os.cpu_count(), "simd": _cpu_flags()},
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
