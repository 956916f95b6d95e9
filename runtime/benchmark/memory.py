"""Memory of a benchmark: peak resident memory (RSS) over a section, and what a batch will need."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


class PeakRss:
    """Peak resident memory of this process over a section, as a delta over its start (MiB).

    On Linux the kernel's high-water mark is reset by writing 5 to /proc/self/clear_refs, so each
    section gets its own peak; elsewhere the process-lifetime peak (getrusage) is used, which
    only shows growth beyond every earlier peak.
    """

    def __init__(self):
        self._start_rss = 0.0
        self._exact = False

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    @staticmethod
    def _rusage_peak() -> float:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 ** 2 if sys.platform == "darwin" else peak / 1024

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._exact = self._status("VmHWM") is not None
        except OSError:
            self._exact = False
        rss = self._status("VmRSS")
        self._start_rss = rss if rss is not None and self._exact else self._rusage_peak()

    def delta_mib(self) -> float:
        peak = self._status("VmHWM") if self._exact else self._rusage_peak()
        return max(0.0, (peak or 0.0) - self._start_rss)


_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1}


def batch_memory_bytes(bundle, graph: str, batch: int) -> int:
    """A lower bound of the memory one `batch` of `graph` needs: its inputs and outputs (from the
    manifest) plus the widest activations of the tower (tokens x 4 * width floats, the MLP's hidden
    layer, for input and output of that layer). Enough to refuse a batch that cannot fit long before
    numpy or the backend fails half way with a MemoryError."""
    entry = bundle.graph_entry(graph, "fp32")
    io = 0
    for tensor in list(entry["inputs"]) + list(entry["outputs"]):
        n = batch
        for d in tensor["shape"][1:]:
            n *= int(d)
        io += n * _ITEMSIZE.get(tensor["dtype"], 4)
    model = bundle.model
    if graph == "video":
        tokens = model["max_frames"] * ((model["image_size"] // model.get("patch_size", 32)) ** 2 + 1)
        width = model.get("vision_width", 768)
    else:
        tokens, width = model["max_words"], model.get("text_width", 512)
    activations = 2 * batch * tokens * 4 * width * 4
    return io + activations


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def check_batch_sizes_fit(bundle, batch_sizes: Sequence[int], available: int | None = None) -> None:
    """Refuse batch sizes whose estimated memory exceeds what the machine has available."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    for batch in sorted(batch_sizes, reverse=True):
        need = max(batch_memory_bytes(bundle, g, batch) for g in ("text", "video"))
        if need > available:
            per_item = max(batch_memory_bytes(bundle, g, 1) for g in ("text", "video"))
            raise ValueError(f"--batch-sizes {batch}: needs about {need / 2**30:.1f} GiB (inputs, outputs and "
                             f"activations of the video graph), but {available / 2**30:.1f} GiB are available; "
                             f"use batch sizes up to {max(available // per_item, 1)}")
