"""Peak resident memory (RSS) of this process over a section of a benchmark."""
from __future__ import annotations


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
