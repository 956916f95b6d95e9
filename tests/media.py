"""The one MP4 (or other container) writer of the tests: real clips encoded with PyAV."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable

import av
import numpy as np


def write_video(path: Path, frames: Iterable[np.ndarray], fps=10, codec: str = "mpeg4",
                container_format: str | None = None, container_options: dict | None = None,
                configure: Callable | None = None) -> Path:
    """Encode RGB uint8 frames (H x W x 3, all the same size) as yuv420p into `path`.

    `configure(stream)` may set codec options (bit rate, GOP, colour tags) before the first frame.
    """
    frames = iter(frames)
    first = next(frames)
    container = av.open(str(path), "w", format=container_format, options=container_options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
    if configure is not None:
        configure(stream)
    for image in itertools.chain([first], frames):
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path
