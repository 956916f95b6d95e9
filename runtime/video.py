"""Torch-free video loading that reproduces the official TS2-Net (CLIP4Clip) dataloader.

The official `RawVideoExtractorCV2` (framerate=1) does, per video:

    fps = int(CAP_PROP_FPS); total = (CAP_PROP_FRAME_COUNT + fps - 1) // fps
    for s in 0..total: seek to frame s*fps, read one frame, stop at the first failed read

then keeps `np.linspace(0, n-1, max_frames).astype(int)` of the n samples, and runs the CLIP
transform (torchvision 0.8 Resize(size, BICUBIC) + CenterCrop + ToTensor + Normalize).

We decode with PyAV *sequentially* instead of seeking: for ordinary MP4 (H.264 / MPEG-4 Part 2)
the frame decoded at position k is pixel-identical to what cv2 returns after seeking to k, and
one sequential pass is both faster and free of seek-accuracy surprises.

Frame count: the official code samples from cv2's *metadata* count (the stream's nb_frames, or
round(duration * fps) when the container has none, e.g. Matroska / MPEG-TS) and relies on the
read failing past the real end. We instead count what is actually decodable during the pass and
sample with that count. Both agree whenever the metadata is right or overcounts; when it
undercounts (rare: a broken index) cv2 would stop at its metadata total while we keep every
decodable second. Metadata only predicts which frames to keep; a wrong prediction costs a second
pass, never a wrong answer. The one exception is a shortfall against a count the stream states
exactly (MP4 `nb_frames`): that is a truncated file and an error (`check_frame_count`).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from .bundle_format import CLIP_MEAN, CLIP_STD



#: Version of *our* decode + transform rules (sampling, decoding pass, resize, crop, normalisation).
#: Bump it whenever a change here can alter a single output pixel, so that every embedding cache
#: and index filled by the old rules is re-encoded instead of served (2: crop offset rounded half up).
PREPROCESSING_RULES_VERSION = 2


def preprocessing_identity() -> dict[str, str]:
    """What produced the pixels: our rules' version and the libraries that decode and resize.

    Embedding caches and indexes store it and re-encode on any mismatch: a new PyAV wheel (with
    its bundled FFmpeg), another FFmpeg build or another Pillow can change decoded or resized
    pixels, and embeddings computed from the old pixels would otherwise be served silently.
    """
    from PIL import __version__ as pillow_version

    ffmpeg = ",".join(f"{lib}={'.'.join(map(str, v))}" for lib, v in sorted(av.library_versions.items())
                      if lib in ("libavcodec", "libavformat", "libavutil", "libswscale"))
    return {"rules": str(PREPROCESSING_RULES_VERSION), "pyav": str(av.__version__), "ffmpeg": ffmpeg,
            "pillow": str(pillow_version)}


def preprocessing_id() -> str:
    """Short digest of `preprocessing_identity()`, for file and directory names."""
    text = ";".join(f"{k}={v}" for k, v in sorted(preprocessing_identity().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class VideoDecodeError(ValueError):
    """A video that cannot be opened or decoded; never silently turned into zero frames.

    A zero tensor with mask 0 would look like a legitimately empty video and yield a garbage
    embedding downstream, so every failure is loud and names the file.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):  # keep it picklable across worker processes (args != (path, reason))
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What cv2 would report: `fps` ~ CAP_PROP_FPS, `frame_count` ~ CAP_PROP_FRAME_COUNT.

    `frame_count_source` says where the count came from: "stream" (container's nb_frames, exact
    for MP4/AVI), "duration" (round(duration * fps), an estimate) or "unknown" (0, no duration).
    """

    path: str
    fps: float
    frame_count: int
    frame_count_source: str
    width: int
    height: int
    codec: str
    duration_frames: int = 0  # round(container duration * fps): what an edit list leaves to play


#: Frames a stream may decode short of what its container states before the file counts as
#: truncated; see `check_frame_count`.
FRAME_COUNT_TOLERANCE = 1


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a container, turning every failure mode into a VideoDecodeError naming the file."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoDecodeError(p, "file not found")
    if not os.path.isfile(p):
        raise VideoDecodeError(p, "not a regular file")
    if os.path.getsize(p) == 0:
        raise VideoDecodeError(p, "file is empty (0 bytes)")
    try:
        container = av.open(p, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(p, f"cannot open container ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(p, "no video stream")
    still = still_image_kind(container)
    if still:
        container.close()
        raise VideoDecodeError(p, f"a still image ({still}), not a video: FFmpeg reads it as a one-frame "
                                  "stream, which would be indexed and ranked like a video; convert it to a video or "
                                  "remove it")
    return container


def still_image_kind(container) -> str | None:
    """The image codec when FFmpeg opened a still image (a PNG or JPEG renamed .mp4), else None.

    Images open through FFmpeg's image demuxers (`png_pipe`, `jpeg_pipe`, `webp_pipe`, ...,
    `image2`) as a 25 fps stream of one frame; a single-frame GIF opens through `gif`. Motion JPEG
    inside AVI/MOV uses a video container's demuxer and is not affected.
    """
    name = container.format.name
    stream = container.streams.video[0]
    if name.endswith("_pipe") or name in ("image2", "image2pipe") or (name == "gif" and (stream.frames or 0) <= 1):
        return stream.codec_context.name
    return None


def _info(container, path: str) -> VideoInfo:
    """Mirror cv2's get_fps()/get_total_frames() (FFmpeg backend) from the same FFmpeg fields."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate and stream.time_base:
        rate = 1 / stream.time_base
    fps = float(rate) if rate else 0.0  # float(Fraction) == double(num)/double(den), like r2d()
    seconds = (container.duration or 0) / 1_000_000  # AV_TIME_BASE units
    if seconds <= 0 and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    by_duration = int(math.floor(seconds * fps + 0.5)) if seconds > 0 else 0
    if stream.frames and stream.frames > 0:
        count, source = int(stream.frames), "stream"
    else:
        count, source = by_duration, "duration" if by_duration > 0 else "unknown"
    ctx = stream.codec_context
    return VideoInfo(path, fps, count, source, int(ctx.width), int(ctx.height), ctx.name, by_duration)


def check_frame_count(info: VideoInfo, decoded: int) -> None:
    """Raise when fewer frames decode than the container states: the file lost its end.

    A "faststart" MP4 (index at the front) that was cut short still opens, and its remaining
    packets often decode without any error, so only the count tells. MP4/MOV streams state an
    exact sample count (`nb_frames`). One legitimate shortfall exists: a stream-copied cut
    (`ffmpeg -ss T -c copy`) keeps the GOP's leading samples and an edit list telling decoders to
    drop them; nb_frames counts them, the decoder does not. Measured on such cuts (`-ss` 1.3, 2.5,
    4.1 s, cut by the ffmpeg 5.1 CLI) of a 300-frame 30 fps GOP-20 H.264 clip, decoded by PyAV 18.1
    (FFmpeg 8 libraries): nb_frames 264, 230, 180 against 261, 225, 177 decoded, each exactly
    round(duration * fps) of the edited duration (tests/test_video.py re-measures it). So the expected count is the smaller of
    the two, and `FRAME_COUNT_TOLERANCE` (1 frame) absorbs the rounding of a microsecond duration
    times a fractional rate. Counts estimated from the duration alone (Matroska, MPEG-TS) are not
    checked: those are estimates, and a short file there shows up as a decoding error.
    """
    if info.frame_count_source != "stream" or decoded >= info.frame_count:
        return
    expected = min(info.frame_count, info.duration_frames) if info.duration_frames > 0 else info.frame_count
    if decoded < expected - FRAME_COUNT_TOLERANCE:
        raise VideoDecodeError(info.path, f"the container states {info.frame_count} frames but only {decoded} "
                                          "decode: the file is truncated or damaged (copy or download it again)")



def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Container metadata as cv2 would see it, without decoding any frame."""
    with _open(path) as container:
        return _info(container, os.fspath(path))


def sample_frame_numbers(frame_count: int, fps: float, max_frames: int) -> list[int]:
    """Frame numbers the official loader keeps for a video of `frame_count` decodable frames.

    One frame per `int(fps)` frames (the truncation makes 29.97 fps sample every 29 frames, so
    samples drift ahead of whole seconds), a partial last second still gives a sample, and more
    than `max_frames` samples are thinned with linspace + truncation, as in the official code.
    """
    step = int(fps)
    if step < 1:
        raise ValueError(f"fps must be >= 1 (int(fps) is the sampling step), got {fps!r}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
    frame_count = max(int(frame_count), 0)
    total = (frame_count + step - 1) // step
    # s runs 0..total inclusive; reads at or past frame_count fail and end the loop.
    frames = [s * step for s in range(total + 1) if s * step < frame_count]
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).astype(int)
        frames = [frames[i] for i in keep]
    return frames


def preprocess_frame(
    rgb: np.ndarray, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD
) -> np.ndarray:
    """CLIP transform of one RGB uint8 frame (H, W, 3) -> float32 (3, size, size).

    Replicates torchvision 0.8: short side to `size` with PIL bicubic and the long side
    `int(size * long / short)` (truncated; no resize if the short side already equals `size`),
    center crop at `int((dim - size + 1) * 0.5)` (torchvision 0.8's offset, rounded half up: a
    352x288 clip resized to 273x224 is cropped at left 25, where the newer half-to-even rule gives
    24), then /255 and normalisation, all in float32 like the torch tensors.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {arr.shape} {arr.dtype}")
    h, w = arr.shape[:2]
    if min(h, w) != size:
        if w < h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        img = Image.fromarray(np.ascontiguousarray(arr))
        arr = np.asarray(img.resize((new_w, new_h), Image.Resampling.BICUBIC))
        h, w = new_h, new_w
    top = int((h - size + 1) * 0.5)
    left = int((w - size + 1) * 0.5)
    crop = arr[top : top + size, left : left + size]
    x = crop.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _decode(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """One sequential pass: RGB arrays for the `wanted` frame numbers, and the decodable count.

    A demux/decode error is a corrupt file and raises. (cv2 is no model here: on a truncated
    MP4 it happily "reads" frames past the damage, returning stale pictures.)
    """
    kept: dict[int, np.ndarray] = {}
    count = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        # Slice threading only: frame threading ("AUTO"/"FRAME") reports errors asynchronously
        # and PyAV then ends the stream quietly, so a truncated file would pass as a short one.
        stream.thread_type = "SLICE"
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoDecodeError(path, f"decoding failed after {count} frames ({exc})") from exc
    return kept, count


@dataclass(frozen=True)
class SampledVideo:
    """What the official loader produces for one file, and which frames it took.

    `frame_numbers[i]` is the 0-based decode position of slot i (real slots only, in order);
    `fps` is the stream's real rate, so slot i shows the picture at `frame_numbers[i] / fps`
    seconds (`times_s`), while the sampling step itself is `int(fps)` (sample_frame_numbers).
    `decoded_frames` is the decodable frame count the samples were chosen from.
    """

    frames: np.ndarray          # float32 [max_frames, 3, size, size], normalised, zero padding
    mask: np.ndarray            # int64 [max_frames], 1 real, 0 padding
    frame_numbers: tuple[int, ...]
    fps: float
    decoded_frames: int

    @property
    def times_s(self) -> tuple[float, ...]:
        return tuple(k / self.fps for k in self.frame_numbers)


def sample_video(
    path: str | os.PathLike,
    max_frames: int = 12,
    size: int = 224,
    mean=CLIP_MEAN,
    std=CLIP_STD,
) -> SampledVideo:
    """Decode, sample (official 1-fps rule) and preprocess a video; see `load_video`."""
    p = os.fspath(path)
    if max_frames < 1 or size < 1:
        raise ValueError(f"max_frames and size must be >= 1, got {max_frames}, {size}")
    info = probe_video(p)
    if int(info.fps) < 1:
        raise VideoDecodeError(p, f"frame rate {info.fps!r} is below 1 fps (int(fps) == 0)")
    predicted = sample_frame_numbers(info.frame_count, info.fps, max_frames)
    kept, count = _decode(p, set(predicted))
    if count == 0:
        raise VideoDecodeError(p, "no decodable frames")
    check_frame_count(info, count)
    chosen = sample_frame_numbers(count, info.fps, max_frames)
    if not set(chosen) <= kept.keys():  # metadata count was wrong: decode again, knowing better
        kept, count2 = _decode(p, set(chosen))
        if count2 != count or not set(chosen) <= kept.keys():
            raise VideoDecodeError(p, "decoding is not repeatable (frame count changed)")
    frames = np.zeros((max_frames, 3, size, size), dtype=np.float32)
    mask = np.zeros((max_frames,), dtype=np.int64)
    for i, k in enumerate(chosen):
        frames[i] = preprocess_frame(kept[k], size, mean, std)
        mask[i] = 1
    return SampledVideo(frames, mask, tuple(chosen), info.fps, count)


def load_video(
    path: str | os.PathLike,
    max_frames: int = 12,
    size: int = 224,
    mean=CLIP_MEAN,
    std=CLIP_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames float32 [max_frames, 3, size, size] and mask int64 [max_frames], as officially.

    Fewer samples than `max_frames` are padded at the end with zeros (zero in normalised space)
    and mask 0. Raises VideoDecodeError for a missing, empty, unreadable or corrupt file.
    `sample_video` returns the same arrays plus the sampled frame numbers and the frame rate.
    """
    video = sample_video(path, max_frames, size, mean, std)
    return video.frames, video.mask
