"""The Python 3.13 environment that runs PyTriton's Triton server (`make serve-setup`).

Why a separate environment: the `nvidia-pytriton` wheel bundles a real `tritonserver` whose
Python-backend stub is linked against libpython 3.13; started from another Python the stub
fails (from 3.11: `'_thread.RLock' object has no attribute '_recursion_count'`). The stub's
pybind11 also predates NumPy 2 (it reads NumPy 1.x array descriptors, so a NumPy 2 output
tensor arrives as zero bytes), hence `numpy<2` below; NumPy 1.26 has no wheel for 3.13, so pip
builds it from source once (minutes) and reuses the cached wheel afterwards.

The environment holds the torch-free runtime's dependencies only; the runtime code itself is
not installed there: `server` puts a folder holding just a link to this `runtime` package on
PYTHONPATH, so the server always runs the code of the checkout that started it and nothing
else from the main environment leaks in. A stamp file records the requirements and the
interpreter; `ensure_serve_env` is a no-op while both are unchanged.

    python -m runtime.triton.environment [--venv DIR] [--if-available]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SERVE_PYTHON_VERSION = (3, 13)
SERVE_REQUIREMENTS = (
    "nvidia-pytriton==0.7.0",
    "numpy>=1.24,<2",            # the bundled Python-backend stub reads NumPy 1.x arrays (see above)
    "onnxruntime>=1.17",
    "openvino>=2024.0",
    "tokenizers>=0.15",
    "ftfy>=6.1",
    "regex>=2023.0",
    "av>=11.0",
    "pillow>=10.0",
    "click>=8.1",
    "tqdm>=4.60",
)
STAMP_NAME = "ts2net-serve-env.json"
# modules the server imports at start; a venv that cannot import them is rebuilt
PROBE = "import pytriton.triton, numpy, onnxruntime, tokenizers; assert numpy.__version__ < '2'"


class ServeEnvError(RuntimeError):
    """The serve environment cannot be created or used here; the message says how to fix it."""


def source_root() -> Path | None:
    """The checkout this `runtime` package lives in (None when it is an installed package)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "runtime").is_dir() else None


def default_venv() -> Path:
    """$TS2NET_SERVE_VENV, else `.cache/serve-venv` in the checkout, else ~/.cache/ts2net/serve-venv."""
    if os.environ.get("TS2NET_SERVE_VENV"):
        return Path(os.environ["TS2NET_SERVE_VENV"])
    root = source_root()
    return root / ".cache" / "serve-venv" if root else Path.home() / ".cache" / "ts2net" / "serve-venv"


def find_python313() -> str | None:
    """A Python 3.13 interpreter: $TS2NET_SERVE_PYTHON, `python3.13` on PATH, or pyenv's."""
    candidates = [os.environ.get("TS2NET_SERVE_PYTHON"), shutil.which("python3.13")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.13*/bin/python3.13"), reverse=True)
    for candidate in candidates:
        if not candidate:
            continue
        try:
            result = subprocess.run([candidate, "-c", "import sys, venv; print(sys.executable); "
                                     "print('%d.%d' % sys.version_info[:2])"],
                                    capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = result.stdout.split()
        if result.returncode == 0 and len(lines) == 2 and lines[1] == "%d.%d" % SERVE_PYTHON_VERSION:
            return lines[0]
    return None


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _stamp(python: str) -> dict:
    return {"python": python, "requirements": list(SERVE_REQUIREMENTS),
            "digest": hashlib.sha256("\n".join((python, *SERVE_REQUIREMENTS)).encode()).hexdigest()[:16]}


def serve_env_ready(venv: Path | None = None) -> bool:
    """Whether the environment exists with the current requirements and imports the server's modules."""
    venv = Path(venv or default_venv())
    stamp_path = venv / STAMP_NAME
    if not stamp_path.is_file() or not venv_python(venv).is_file():
        return False
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if stamp.get("digest") != _stamp(stamp.get("python", "")).get("digest") or \
            stamp.get("requirements") != list(SERVE_REQUIREMENTS):
        return False
    probe = subprocess.run([str(venv_python(venv)), "-c", PROBE], capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


def ensure_serve_env(venv: Path | None = None, quiet: bool = True) -> Path:
    """Create (or repair) the serve environment; returns its python. Cached by the stamp file."""
    venv = Path(venv or default_venv())
    if serve_env_ready(venv):
        return venv_python(venv)
    python = find_python313()
    if python is None:
        raise ServeEnvError("`ts2net serve` needs Python 3.13 (PyTriton's tritonserver bundles libpython 3.13) and "
                            "none was found: install it (e.g. `pyenv install 3.13`) or point TS2NET_SERVE_PYTHON at "
                            "a python3.13")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    wheels = (source_root() or venv.parent) / ".cache" / "wheels"
    if wheels.is_dir():
        pip += ["--find-links", str(wheels)]
    print(f"creating the serve environment {venv} (Python 3.13; NumPy 1.26 is built from source the first time, "
          "which takes minutes)", file=sys.stderr, flush=True)
    try:
        subprocess.run(pip + list(SERVE_REQUIREMENTS), check=True)
    except subprocess.CalledProcessError as exc:
        raise ServeEnvError(f"pip could not install the serve requirements into {venv} (exit {exc.returncode}); "
                            "see pip's output above") from exc
    probe = subprocess.run([str(venv_python(venv)), "-c", PROBE], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise ServeEnvError(f"{venv}: the installed server modules do not import: {probe.stderr.strip()[-500:]}")
    (venv / STAMP_NAME).write_text(json.dumps(_stamp(python), indent=1) + "\n")
    return venv_python(venv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the Python 3.13 environment `ts2net serve` runs in.")
    parser.add_argument("--venv", type=Path, default=None, help="where (default: .cache/serve-venv in the checkout)")
    parser.add_argument("--if-available", action="store_true",
                        help="do nothing (exit 0) when no Python 3.13 is installed")
    args = parser.parse_args(argv)
    if args.if_available and find_python313() is None:
        print("no Python 3.13 found: the serve environment is not created (the real-server tests will skip)",
              file=sys.stderr)
        return 0
    try:
        python = ensure_serve_env(args.venv)
    except ServeEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"serve environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
