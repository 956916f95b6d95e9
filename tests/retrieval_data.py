"""Shared data of the retrieval tests (eval, index): six coloured clips, their captions, a 1k-A CSV,
an independent similarity and a spy on the encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from media import write_video
from runtime import similarity

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40),
           "white": (240, 240, 240), "black": (20, 20, 20)}

def write_clip(path: Path, colour, seconds: float, fps: int = 10, w: int = 64, h: int = 48) -> Path:
    """A small MPEG-4 clip: a flat colour with a square of the complementary colour moving right."""
    def frame(i: int) -> np.ndarray:
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colour
        x = (3 * i) % (w - 8)
        img[10:18, x:x + 8] = 255 - np.asarray(colour, np.uint8)
        return img

    return write_video(path, (frame(i) for i in range(max(1, int(round(seconds * fps))))), fps)


def caption(i: int) -> str:
    return f"a {list(COLOURS)[i]} screen with a small square moving"


def write_1ka_csv(path: Path, n: int = 6) -> Path:
    rows = ["key,vid_key,video_id,sentence"] + [f"ret{i},msr{i},video{i},{caption(i)}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def independent_similarity(bundle_dir: Path, texts, video_paths):
    """Similarity computed without runtime.evaluation.evaluate / runtime.embedding_cache."""
    from runtime.bundle import open_bundle
    from runtime.encoder import BundleEncoder

    bundle = open_bundle(bundle_dir)
    with BundleEncoder(bundle) as encoder:
        text = encoder.encode_texts(list(texts))
        videos = encoder.encode_video_files([str(p) for p in video_paths], progress=False)
    return similarity(text, videos.frame_embeds, videos.frame_mask, **bundle.similarity_args)


class EncoderSpy:
    """Counts what goes through BundleEncoder (wraps the real methods, so results are unchanged)."""

    def __init__(self, monkeypatch):
        from runtime.encoder import BundleEncoder

        self.videos: list[str] = []
        self.texts: list[str] = []
        real_videos, real_texts = BundleEncoder.encode_video_files, BundleEncoder.encode_texts
        spy = self

        def encode_video_files(self, paths, *args, **kwargs):
            spy.videos += [Path(p).name for p in paths]
            return real_videos(self, paths, *args, **kwargs)

        def encode_texts(self, texts, *args, **kwargs):
            spy.texts += list(texts)
            return real_texts(self, texts, *args, **kwargs)

        monkeypatch.setattr(BundleEncoder, "encode_video_files", encode_video_files)
        monkeypatch.setattr(BundleEncoder, "encode_texts", encode_texts)

    def reset(self):
        self.videos.clear()
        self.texts.clear()


def write_colour_clips(folder: Path) -> Path:
    """Six clips video0..video5 (1 to 5 s, so 1 to 5 sampled frames of 12)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(COLOURS.values()):
        write_clip(folder / f"video{i}.mp4", colour, 1 + 0.8 * i)
    return folder
