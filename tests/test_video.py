"""Tests for runtime.video: PyAV decoding must reproduce the official cv2-based TS2-Net loader.

Small synthetic videos are written with PyAV. Every frame carries its own frame number as a
12-bit code of large blocks (robust to compression), so tests can tell *which* frame came back,
independently of any decoder's opinion. The reference below re-implements the official
`RawVideoExtractorCV2` + dataloader slicing with cv2 seeking, written from the official code and
not from runtime.video, so the two only agree if the semantics really match.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from media import write_video
from runtime import video as rv
from runtime.video import (
    CLIP_MEAN,
    CLIP_STD,
    VideoDecodeError,
    load_video,
    preprocess_frame,
    probe_video,
    sample_frame_numbers,
)

try:
    import cv2
except Exception as exc:  # pragma: no cover - depends on the environment
    cv2 = None
    CV2_SKIP_REASON = f"cv2 (opencv-python-headless, a dev extra) cannot be imported: {exc}"
else:
    CV2_SKIP_REASON = ""

needs_cv2 = pytest.mark.skipif(cv2 is None, reason=CV2_SKIP_REASON or "cv2 missing")

ROWS, COLS = 3, 4  # frame-number code: 12 bits, one block each


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


H264 = "libx264" if _has_encoder("libx264") else None
MPEG4 = "mpeg4" if _has_encoder("mpeg4") else None


def frame_image(i: int, w: int, h: int) -> np.ndarray:
    """RGB frame encoding `i` in R/G blocks, with a per-frame blue gradient for texture."""
    yy, xx = np.mgrid[0:h, 0:w]
    bit_index = (yy * ROWS // h) * COLS + (xx * COLS // w)
    bits = (i >> bit_index) & 1
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 40 + 175 * bits
    img[..., 1] = 215 - 175 * bits
    img[..., 2] = (xx * 255 // max(w - 1, 1) + 17 * i) % 256
    return img


def read_code(rgb: np.ndarray) -> int:
    """Inverse of frame_image: sample each block's centre."""
    h, w = rgb.shape[:2]
    code = 0
    for r in range(ROWS):
        for c in range(COLS):
            y = int((r + 0.5) * h / ROWS)
            x = int((c + 0.5) * w / COLS)
            if rgb[y, x, 0] > 128:
                code |= 1 << (r * COLS + c)
    return code


def write_spec_video(path: Path, n: int, rate, w: int, h: int, codec: str, fmt: str | None = None,
                     bt709: bool = False) -> Path:
    def configure(stream) -> None:
        ctx = stream.codec_context
        ctx.gop_size = 20  # samples land mid-GOP, so cv2 really has to seek + decode forward
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}  # veryfast keeps B-frames
        else:
            ctx.bit_rate = 4_000_000
        if bt709:
            ctx.colorspace = 1  # AVCOL_SPC_BT709
            ctx.color_range = 1  # AVCOL_RANGE_MPEG

    return write_video(path, (frame_image(i, w, h) for i in range(n)), rate, codec, container_format=fmt,
                       configure=configure)


# name: (frames, rate, width, height, codec, container format, bt709)
# Crop notes (size 224, offset int((L - 224 + 1) * 0.5), half up): 172x128 -> 301 wide, offset 39
# (half to even would say 38); 128x170 -> 297 high, 37; 171x128 -> int(299.25) = 299, 38 (floor
# would say 37); 170x128 -> int(297.5) = 297, 37. libx264 rejects odd sizes, so the odd one uses
# MPEG-4 Part 2.
SPECS = {
    "25fps_under_1s": (10, 25, 160, 120, H264, None, False),
    "30fps_partial_last_second_of_1_frame": (61, 30, 160, 120, H264, None, False),
    "29.97fps_drift_more_than_T_samples": (420, Fraction(30000, 1001), 172, 128, H264, None, False),
    "23.976fps_portrait": (100, Fraction(24000, 1001), 128, 170, H264, None, False),
    "24fps_odd_171x128": (73, 24, 171, 128, MPEG4, None, False),
    "30fps_170x128_half_up_crop": (95, 30, 170, 128, MPEG4, None, False),
    "25fps_square_224_whole_seconds": (50, 25, 224, 224, H264, None, False),
    "25fps_matroska_no_nb_frames": (61, 25, 160, 120, H264, "matroska", False),
    "25fps_bt709_tagged": (30, 25, 160, 120, H264, None, True),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, (n, rate, w, h, codec, fmt, bt709) in SPECS.items():
        codec = codec or MPEG4  # libx264 missing: fall back to MPEG-4 Part 2
        if codec is None:
            continue
        ext = ".mkv" if fmt == "matroska" else ".mp4"
        out[name] = write_spec_video(root / f"{name}{ext}", n, rate, w, h, codec, fmt, bt709)
    return out


def _video(videos, name) -> Path:
    if name not in videos:
        pytest.skip(f"no encoder available for {name}")
    return videos[name]


# ---------------------------------------------------------------- official reference (cv2)

def official_transform(img: Image.Image, size: int) -> np.ndarray:
    """torchvision 0.8 Resize(size, BICUBIC) + CenterCrop(size) + ToTensor + Normalize(CLIP)."""
    w, h = img.size
    if not ((w <= h and w == size) or (h <= w and h == size)):
        if w < h:
            ow, oh = size, int(size * h / w)
        else:
            oh, ow = size, int(size * w / h)
        img = img.resize((ow, oh), Image.BICUBIC)
    w, h = img.size
    top = int((h - size + 1) * 0.5)
    left = int((w - size + 1) * 0.5)
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    t = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    return (t - mean) / std


def official_load(path: Path, max_frames: int = 12, size: int = 224):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(cap.get(cv2.CAP_PROP_FPS))
    total_duration = (frame_count + fps - 1) // fps
    images, numbers = [], []
    ret = True
    for sec in np.arange(0, total_duration + 1):
        if not ret:
            break
        sec_base = int(sec * fps)
        cap.set(cv2.CAP_PROP_POS_FRAMES, sec_base)
        ret, frame = cap.read()
        if not ret:
            break
        frame_rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        images.append(official_transform(Image.fromarray(frame_rgb).convert("RGB"), size))
        numbers.append(sec_base)
    cap.release()
    raw = np.stack(images)
    numbers = np.asarray(numbers)
    if raw.shape[0] > max_frames:
        idx = np.linspace(0, raw.shape[0] - 1, num=max_frames, dtype=int)
        raw, numbers = raw[idx], numbers[idx]
    video = np.zeros((max_frames, 3, size, size), np.float32)
    mask = np.zeros((max_frames,), np.int64)
    video[: raw.shape[0]] = raw
    mask[: raw.shape[0]] = 1
    return video, mask, numbers.tolist(), frame_count, fps


@needs_cv2
@pytest.mark.parametrize("name", list(SPECS))
def test_matches_official_cv2_loader(videos, name):
    path = _video(videos, name)
    ref, ref_mask, ref_numbers, cv_count, cv_fps = official_load(path)
    info = probe_video(path)
    assert info.frame_count == cv_count  # CAP_PROP_FRAME_COUNT
    assert int(info.fps) == cv_fps
    assert info.fps == cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS)  # bit-identical double
    assert sample_frame_numbers(SPECS[name][0], info.fps, 12) == ref_numbers
    frames, mask = load_video(path)
    assert frames.dtype == np.float32 and frames.shape == (12, 3, 224, 224)
    assert mask.dtype == np.int64 and mask.shape == (12,)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(frames, ref, rtol=0, atol=1e-6)


@needs_cv2
def test_matches_official_cv2_other_sizes(videos):
    path = _video(videos, "29.97fps_drift_more_than_T_samples")
    ref, ref_mask, *_ = official_load(path, max_frames=5, size=112)
    frames, mask = load_video(path, max_frames=5, size=112)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(frames, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- common sizes, official crop rule

# (width, height): CIF resizes to 273x224 and is cropped at left int((273 - 224 + 1) * 0.5) = 25,
# where Python's round((273 - 224) / 2) = round(24.5) = 24 (half to even, torchvision >= 0.9).
# 320x260 resizes to 275x224: int(52 * 0.5) = 26 and round(25.5) = 26 agree (the control: the two
# rules differ only when (L - 224) mod 4 == 1).
CIF_LIKE = {"cif_352x288": (352, 288), "320x260": (320, 260)}


def _official_crop_box(w: int, h: int, size: int = 224) -> tuple[int, int]:
    """(left, top) of the official crop, by the torchvision 0.8 formula, from the resized size."""
    if w < h:
        ow, oh = size, int(size * h / w)
    else:
        ow, oh = int(size * w / h), size
    return int((ow - size + 1) * 0.5), int((oh - size + 1) * 0.5)


def test_cif_crop_offsets_by_hand():
    assert _official_crop_box(352, 288) == (25, 0)  # 273 wide: half up 24.5 -> 25 (half to even: 24)
    assert _official_crop_box(320, 260) == (26, 0)  # 275 wide: int(52 * 0.5) = 26 (both rules agree)


@pytest.fixture(scope="module")
def cif_videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cif")
    codec = H264 or MPEG4
    if codec is None:
        pytest.skip("no H.264 or MPEG-4 encoder")
    return {name: write_spec_video(root / f"{name}.mp4", 40, 25, w, h, codec)
            for name, (w, h) in CIF_LIKE.items()}


def _decoded_rgb_frames(path: Path) -> list[np.ndarray]:
    """Every frame as RGB, decoded by PyAV directly (not through runtime.video)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("name", list(CIF_LIKE))
def test_common_sizes_equal_the_official_rule_pixel_for_pixel(cif_videos, name):
    """load_video's frames are exactly torchvision 0.8's transform of the official frames."""
    path = cif_videos[name]
    rgb = _decoded_rgb_frames(path)
    numbers = sample_frame_numbers(len(rgb), 25.0, 12)
    assert numbers == [0, 25]
    expected = np.stack([official_transform(Image.fromarray(rgb[k]), 224) for k in numbers])
    frames, mask = load_video(path)
    assert mask.tolist() == [1, 1] + [0] * 10
    np.testing.assert_array_equal(frames[:2], expected)
    w, h = CIF_LIKE[name]
    left, top = _official_crop_box(w, h)
    ow = int(224 * w / h)
    resized = np.asarray(Image.fromarray(rgb[0]).resize((ow, 224), Image.BICUBIC))
    np.testing.assert_array_equal(frames[0], _normalised(resized[top:top + 224, left:left + 224]))


@needs_cv2
@pytest.mark.parametrize("name", list(CIF_LIKE))
def test_common_sizes_match_official_cv2_loader(cif_videos, name):
    ref, ref_mask, *_ = official_load(cif_videos[name])
    frames, mask = load_video(cif_videos[name])
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(frames, ref)


# ---------------------------------------------------------------- sampling rule

@pytest.mark.parametrize(
    "frame_count, fps, max_frames, expected",
    [
        (100, 30000 / 1001, 12, [0, 29, 58, 87]),  # int(29.97) = 29: drifts ahead of 30, 60, 90
        (100, 24000 / 1001, 12, [0, 23, 46, 69, 92]),  # int(23.976) = 23
        (61, 30, 12, [0, 30, 60]),  # partial last second of one frame adds a sample
        (60, 30, 12, [0, 30]),  # whole seconds: no extra sample
        (10, 25, 12, [0]),  # under a second
        (1, 25, 12, [0]),
        (0, 25, 12, []),
        # 15 samples (0..406 step 29) -> linspace(0, 14, 12) = 0,1.27,2.55,...,14 -> truncated
        (420, 30000 / 1001, 12, [0, 29, 58, 87, 145, 174, 203, 232, 290, 319, 348, 406]),
        (300, 25, 12, [25 * s for s in range(12)]),  # exactly 12 samples: no slicing
        (100, 25, 1, [0]),
        (100, 25, 2, [0, 75]),
    ],
)
def test_sample_frame_numbers_hand_cases(frame_count, fps, max_frames, expected):
    assert sample_frame_numbers(frame_count, fps, max_frames) == expected


def test_sample_frame_numbers_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sample_frame_numbers(100, 0.5, 12)  # int(fps) == 0: the official code divides by it
    with pytest.raises(ValueError):
        sample_frame_numbers(100, 25, 0)


def test_decoded_frame_numbers_are_presentation_order(videos):
    """Frame k of the sequential pass is the k-th frame written (B-frames reordered)."""
    path = _video(videos, "23.976fps_portrait")
    kept, count = rv._decode(str(path), set(range(100)))
    assert count == 100
    assert [read_code(kept[k]) for k in range(100)] == list(range(100))


@pytest.mark.parametrize("name", list(SPECS))
def test_load_video_keeps_the_official_frames(videos, name, monkeypatch):
    """Without cv2: the frames load_video preprocesses are exactly the official frame numbers."""
    path = _video(videos, name)
    n, rate = SPECS[name][0], SPECS[name][1]
    seen = []
    real = rv.preprocess_frame

    def spy(rgb, *args):
        seen.append(read_code(rgb))
        return real(rgb, *args)

    monkeypatch.setattr(rv, "preprocess_frame", spy)
    _, mask = load_video(path)
    expected = sample_frame_numbers(n, float(rate), 12)
    assert seen == expected
    assert mask.tolist() == [1] * len(expected) + [0] * (12 - len(expected))


# ---------------------------------------------------------------- metadata

def test_probe_video_metadata(videos):
    info = probe_video(_video(videos, "29.97fps_drift_more_than_T_samples"))
    assert info.fps == 30000 / 1001 and int(info.fps) == 29
    assert (info.frame_count, info.frame_count_source) == (420, "stream")
    assert (info.width, info.height) == (172, 128)
    mkv = probe_video(_video(videos, "25fps_matroska_no_nb_frames"))
    assert (mkv.fps, mkv.frame_count, mkv.frame_count_source) == (25.0, 61, "duration")


@pytest.mark.parametrize("wrong_count", [0, 30, 61 * 3])  # missing, undercount, overcount
def test_wrong_metadata_count_is_corrected_by_decoding(videos, monkeypatch, wrong_count):
    path = _video(videos, "30fps_partial_last_second_of_1_frame")
    good_frames, good_mask = load_video(path)
    real_info, real_decode, passes = rv._info, rv._decode, []

    def lying_info(container, p):
        return dataclasses.replace(real_info(container, p), frame_count=wrong_count)

    def counting_decode(p, wanted):
        passes.append(wanted)
        return real_decode(p, wanted)

    monkeypatch.setattr(rv, "_info", lying_info)
    monkeypatch.setattr(rv, "_decode", counting_decode)
    frames, mask = load_video(path)
    np.testing.assert_array_equal(mask, good_mask)
    np.testing.assert_array_equal(frames, good_frames)
    assert len(passes) == (1 if wrong_count > 61 else 2)  # overcount needs no second pass


# ---------------------------------------------------------------- preprocessing

def _normalised(crop: np.ndarray) -> np.ndarray:
    x = crop.astype(np.float32) / np.float32(255)
    return ((x - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "h, w, top, left",
    [
        (224, 297, 0, 37),  # int((297-224+1) * 0.5) = 37 (half to even would give 36)
        (224, 299, 0, 38),  # int(76 * 0.5) = 38 (floor of 37.5 would be 37)
        (297, 224, 37, 0),  # portrait
        (224, 300, 0, 38),  # int(77 * 0.5) = 38
    ],
)
def test_center_crop_rounding_is_pinned(h, w, top, left):
    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = preprocess_frame(rgb, 224)
    np.testing.assert_array_equal(out, _normalised(rgb[top : top + 224, left : left + 224]))


def test_resize_truncates_long_side_then_crops():
    # 171x128 -> 299.25 -> 299 wide (truncated), crop left int(76 * 0.5) = 38
    rgb = np.random.default_rng(0).integers(0, 256, (128, 171, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(rgb).resize((299, 224), Image.BICUBIC))
    np.testing.assert_array_equal(preprocess_frame(rgb, 224), _normalised(resized[:, 38:262]))


def test_preprocess_frame_output_and_validation():
    out = preprocess_frame(frame_image(5, 160, 120), 224)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(ValueError):
        preprocess_frame(np.zeros((10, 10), np.uint8), 224)
    with pytest.raises(ValueError):
        preprocess_frame(np.zeros((10, 10, 3), np.float32), 224)


def test_padding_is_zero_with_mask_zero(videos):
    frames, mask = load_video(_video(videos, "30fps_partial_last_second_of_1_frame"))
    assert mask.tolist() == [1, 1, 1] + [0] * 9
    assert not frames[3:].any()
    assert all(frames[i].any() for i in range(3))
    frames, mask = load_video(_video(videos, "25fps_under_1s"), max_frames=4, size=32)
    assert frames.shape == (4, 3, 32, 32) and mask.tolist() == [1, 0, 0, 0]


# ---------------------------------------------------------------- bad files

def _assert_decode_error(path: Path, *reason_words: str):
    with pytest.raises(VideoDecodeError) as info:
        load_video(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err)
    for word in reason_words:
        assert word in err.reason
    return err


def test_missing_path(tmp_path):
    _assert_decode_error(tmp_path / "nope.mp4", "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _assert_decode_error(path, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    _assert_decode_error(path, "cannot open")


def test_directory(tmp_path):
    _assert_decode_error(tmp_path, "not a regular file")


def test_audio_only_file(tmp_path):
    path = tmp_path / "audio.wav"
    container = av.open(str(path), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    _assert_decode_error(path, "no video stream")


@pytest.mark.skipif(H264 is None, reason="needs libx264")
@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_to_half(tmp_path, faststart):
    """Index at the end (default): open fails. Index first (faststart): decoding hits the cut."""
    full = tmp_path / "full.mp4"
    write_video(full, (frame_image(i, 160, 120) for i in range(150)), 30, "libx264",
                container_options={"movflags": "faststart"} if faststart else None)
    data = full.read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _assert_decode_error(cut, "decoding failed" if faststart else "cannot open")


def test_error_pickles_and_names_file():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "boom")))
    assert (err.path, err.reason) == ("/x/y.mp4", "boom") and "/x/y.mp4" in str(err)


def test_module_imports_neither_torch_nor_cv2():
    code = (
        "import sys, runtime.video\n"
        "bad = [m for m in ('torch', 'cv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_preprocessing_identity_names_rules_and_pixel_libraries(monkeypatch):
    import PIL

    ident = rv.preprocessing_identity()
    assert ident["pyav"] == av.__version__ and ident["pillow"] == PIL.__version__
    assert "libavcodec=" in ident["ffmpeg"] and ident["rules"] == str(rv.PREPROCESSING_RULES_VERSION)
    before = rv.preprocessing_id()
    monkeypatch.setattr(av, "library_versions", {**av.library_versions, "libavcodec": (1, 2, 3)})
    assert rv.preprocessing_id() != before


# ---------------------------------------------------------------- truncated files (item 14)

@pytest.mark.skipif(H264 is None, reason="needs libx264")
def test_no_cut_point_of_a_faststart_mp4_passes_as_a_shorter_clip(tmp_path):
    """Index at the front: some cuts decode without any error; the stated count must catch them."""
    full = write_video(tmp_path / "full.mp4", (frame_image(i, 160, 120) for i in range(150)), 30, "libx264",
                       container_options={"movflags": "faststart"})
    data = full.read_bytes()
    silent = []
    for percent in range(20, 100):
        cut = tmp_path / f"cut{percent}.mp4"
        cut.write_bytes(data[: len(data) * percent // 100])
        try:
            _, count = rv._decode(str(cut), set())
        except VideoDecodeError:
            pass
        else:
            silent.append((cut, count))
        with pytest.raises(VideoDecodeError) as info:     # every cut is refused, one way or the other
            load_video(cut)
        assert str(cut) in str(info.value)
    for cut, count in silent:                              # those that decode quietly: named by the count
        with pytest.raises(VideoDecodeError, match=f"the container states 150 frames but only {count} decode"):
            load_video(cut)


@pytest.mark.skipif(H264 is None or not __import__("shutil").which("ffmpeg"), reason="needs libx264 and ffmpeg")
def test_stream_copied_cuts_with_edit_lists_are_accepted(tmp_path):
    """The evidence for check_frame_count: an edit list drops pre-roll frames nb_frames still counts."""
    src = write_spec_video(tmp_path / "src.mp4", 300, 30, 160, 120, H264)
    for start in ("1.3", "2.5", "4.1"):
        cut = tmp_path / f"cut{start}.mp4"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", start, "-i", str(src), "-c", "copy", str(cut)],
                       check=True)
        info = probe_video(cut)
        _, count = rv._decode(str(cut), set())
        assert count <= info.frame_count and abs(count - info.duration_frames) <= rv.FRAME_COUNT_TOLERANCE
        frames, mask = load_video(cut)                     # accepted
        assert mask.sum() == len(sample_frame_numbers(count, info.fps, 12))


@pytest.mark.parametrize("fmt, codec", [("PNG", "png"), ("JPEG", "mjpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_still_images_renamed_to_mp4_are_not_videos(tmp_path, fmt, codec):
    path = tmp_path / f"photo_{fmt.lower()}.mp4"
    Image.fromarray(frame_image(3, 160, 120)).save(path, format=fmt)
    err = _assert_decode_error(path, f"a still image ({codec}), not a video")
    with pytest.raises(VideoDecodeError):
        probe_video(path)
    assert "convert it to a video or remove it" in err.reason
