"""File helpers every package shares: atomic writes (a crash never leaves half a file) and checksums.

Torch-free and dependency-free (numpy only for .npy), so `ts2net`, `export` and `runtime` all use
this one implementation.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` through a temporary file in the same folder and `os.replace`.

    The temporary name starts with a dot and ends in `.tmp`, so readers listing a folder can skip
    crash leftovers. The file gets the usual permissions (mkstemp alone would leave it 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, *, fsync: bool = True) -> Path:
    """`np.save` through `atomic_write_bytes` (the result can be memory-mapped)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue(), fsync=fsync)


def npz_bytes(arrays) -> bytes:
    """The bytes of an uncompressed .npz of `arrays` (name -> array), for atomic_write_bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike):
    """Hold an exclusive `flock` on the lock file `path`, waiting for any other holder first.

    For writers that should take turns rather than fail (two trainings filling one frame cache,
    two parity runs recording gate outcomes in one manifest); `directory_lock` is the variant that
    refuses a second writer instead. The kernel releases the lock if the process dies.
    """
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LockHeldError(RuntimeError):
    """Another process holds the lock; the message names the directory and the command."""


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, command: str, name: str = ".lock"):
    """Hold an exclusive, non-blocking `flock` on `directory/name` for the duration of the block.

    The kernel releases it when the process dies, so a crash never leaves a stale lock (the file
    itself stays and is harmless). A second writer fails at once with a clear message instead of
    waiting or, worse, interleaving its writes with the first one's.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / name, "a+b")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(f"another `{command}` holds the lock on {folder}; wait for it to finish "
                                "(or write elsewhere)") from None
        yield
    finally:
        handle.close()
