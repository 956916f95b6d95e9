"""Atomic file writes for ts2net: the shared implementation lives in `runtime.files` (torch-free)."""
from runtime.files import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
