"""The resumable run state (checkpoints/last.pt): save, load, check, and the log trimmed to it."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from runtime.files import atomic_write_bytes, atomic_write_text
from .distributed import DistInfo
from .options import RESULT_OPTIONS, TrainOptions

STATE_FORMAT, STATE_VERSION = "ts2net-train-state", 1


def save_state(path: Path, **state: Any) -> None:
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a {STATE_FORMAT} v{STATE_VERSION} file")
    return state


def check_resume_options(saved: dict[str, Any], opts: TrainOptions) -> None:
    now = dataclasses.asdict(opts)
    # an option a checkpoint predates was run at its default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    differ = [f"--{k.replace('_', '-')}: run used {saved.get(k, defaults[k])!r}, now {now[k]!r}"
              for k in RESULT_OPTIONS if jsonable(saved.get(k, defaults[k])) != jsonable(now[k])]
    if differ:
        raise ValueError("--resume must repeat the interrupted run's options:\n  " + "\n  ".join(differ))


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if not info.active:
        return [state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def trim_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
