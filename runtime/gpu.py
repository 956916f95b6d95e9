"""The one GPU probe and the one TensorRT import check of the project (torch-free).

Used by the backends (which backends can run here), the reports (the machine a number was measured
on) and the engine builder (the GPU an engine is built for, the TensorRT that builds it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any

TENSORRT_INSTALL_HINT = ("install NVIDIA's wheels with `pip install 'ts2net-deploy[tensorrt]'` (tensorrt + polygraphy; "
                         "see README), on a Linux/Windows machine with an NVIDIA GPU and driver")


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


def tensorrt_status() -> tuple[str | None, str]:
    """(TensorRT version, "") when tensorrt and polygraphy import, else (None, why not and how to fix)."""
    try:
        import tensorrt
    except ImportError as exc:
        return None, f"TensorRT is not installed ({exc}): {TENSORRT_INSTALL_HINT}"
    except Exception as exc:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError & co
        return None, f"TensorRT is installed but cannot be loaded ({type(exc).__name__}: {exc}): {TENSORRT_INSTALL_HINT}"
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        return None, "TensorRT is installed but polygraphy (used to run engines) is not: pip install polygraphy"
    return str(tensorrt.__version__), ""
