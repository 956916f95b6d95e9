"""The one GPU probe and the one TensorRT import check of the project (torch-free).

Used by the backends (which backends can run here), the reports (the machine a number was measured
on) and the engine builder (the GPU an engine is built for, the TensorRT that builds it).
"""
from __future__ import annotations

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
