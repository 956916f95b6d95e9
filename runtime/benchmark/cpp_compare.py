"""C++ (`ts2net-cpp`) vs the Python runtime: decode + preprocess and encode time per video, same files.

`ts2net cpp-bench` (cli/cpp_bench.py) runs it; `make demo` on the test split's first 100 videos.
Both sides decode sequentially (one thread) with the official 1 fps rule and encode in batches of
the same size on all cores: Python with runtime.video.load_video and BundleEncoder (ONNX Runtime
CPU, FP32), C++ with `ts2net-cpp encode` (FFmpeg + OpenVINO, INFERENCE_PRECISION_HINT f32; also
int8 where the bundle has INT8 graphs and bf16 where the CPU has it). The embeddings are compared
too (cosine per real frame). The report records the machine and its load (runtime.reports), since
these machines are shared: the ratios are measured in the same run.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import open_bundle
from ..datasets import load_retrieval_set
from ..encoder import BundleEncoder
from ..files import atomic_write_text
from ..reports import environment, environment_markdown
from ..video import load_video


class CppBenchError(RuntimeError):
    """The C++ side could not run (binary missing, or `ts2net-cpp encode` failed); the message says why."""


def python_timing(bundle_dir: Path, paths: list[str], batch: int) -> tuple[dict, np.ndarray, np.ndarray]:
    bundle = open_bundle(bundle_dir)
    pre = bundle.preprocessing
    decode_s = encode_s = 0.0
    embeds, masks = [], []
    with BundleEncoder(bundle, batch_size=batch) as encoder:
        encoder.backend("video")  # load outside the timed region, as the C++ side compiles first
        for start in range(0, len(paths), batch):
            t0 = time.perf_counter()
            clips = [load_video(p, bundle.max_frames, bundle.image_size, tuple(pre["mean"]), tuple(pre["std"]))
                     for p in paths[start:start + batch]]
            t1 = time.perf_counter()
            frames, mask = np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])
            out, _ = encoder.encode_frames(frames, mask)
            t2 = time.perf_counter()
            decode_s += t1 - t0
            encode_s += t2 - t1
            embeds.append(out)
            masks.append(mask)
    n = len(paths)
    return ({"decode_preprocess_ms_per_video": 1e3 * decode_s / n, "encode_ms_per_video": 1e3 * encode_s / n,
             "decode_preprocess_seconds": decode_s, "encode_seconds": encode_s, "backend": "onnxruntime-cpu fp32"},
            np.concatenate(embeds), np.concatenate(masks))


def cpp_timing(cli: Path, bundle_dir: Path, paths: list[str], batch: int, precision: str, work: Path
               ) -> tuple[dict, np.ndarray, np.ndarray]:
    listing = work / "videos.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = work / f"cpp-{precision}"
    result = subprocess.run([str(cli), "encode", str(bundle_dir), str(out), "--list", str(listing), "--batch",
                             str(batch), "--precision", precision], capture_output=True, text=True)
    if result.returncode != 0:
        raise CppBenchError(f"ts2net-cpp encode ({precision}) failed: {result.stderr.strip()}")
    timing = json.loads((out / "videos.json").read_text())["timing"]
    timing["backend"] = f"openvino-cpp {precision}"
    return timing, np.load(out / "frame_embeds.npy"), np.load(out / "frame_mask.npy")


def min_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    x, y = a[real].astype(np.float64), b[real].astype(np.float64)
    return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).min())


def bf16_available() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def compare_encode(bundle_dir: Path, annotations: Path, videos_dir: Path, out: Path, first: int = 100,
                   batch: int = 8, cli: Path = Path("cpp/build/ts2net-cpp")) -> tuple[dict[str, Any], str]:
    """Time both runtimes on the first `first` videos; write encode-timing.{json,md} into `out`."""
    if not Path(cli).is_file():
        raise CppBenchError(f"{cli}: ts2net-cpp is not built; run `make cpp`")
    data = load_retrieval_set(annotations, videos_dir)
    paths = [str(data.video_paths[v]) for v in data.video_ids[:first]]
    env_before = environment()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["python"], py_embeds, py_mask = python_timing(bundle_dir, paths, batch)
        rows["cpp-fp32"], cpp_embeds, cpp_mask = cpp_timing(cli, bundle_dir, paths, batch, "fp32", Path(tmp))
        if not np.array_equal(py_mask, cpp_mask):
            raise CppBenchError("C++ and Python frame masks differ on the same videos")
        rows["cpp-fp32"]["min_cosine_vs_python"] = min_cosine(cpp_embeds, py_embeds, py_mask)
        if "int8" in open_bundle(bundle_dir).manifest["graphs"]["video"]:
            rows["cpp-int8"], i8_embeds, _ = cpp_timing(cli, bundle_dir, paths, batch, "int8", Path(tmp))
            rows["cpp-int8"]["min_cosine_vs_python"] = min_cosine(i8_embeds, py_embeds, py_mask)
        if bf16_available():
            rows["cpp-bf16"], bf_embeds, _ = cpp_timing(cli, bundle_dir, paths, batch, "bf16", Path(tmp))
            rows["cpp-bf16"]["min_cosine_vs_python"] = min_cosine(bf_embeds, py_embeds, py_mask)
    py = rows["python"]
    for row in rows.values():
        row["decode_speedup_vs_python"] = py["decode_preprocess_ms_per_video"] / row["decode_preprocess_ms_per_video"]
        row["encode_speedup_vs_python"] = py["encode_ms_per_video"] / row["encode_ms_per_video"]
    report = {"bundle": str(bundle_dir), "videos": len(paths), "batch": batch, "decode_threads": 1,
              "environment": env_before, "load_average_1m_after": environment()["load_average_1m"], "rows": rows}
    lines = [f"# C++ vs Python encode time ({len(paths)} videos of {Path(annotations).name}, batch {batch})", "",
             environment_markdown(env_before).rstrip(),
             f"- load average (1 min) after the run: {report['load_average_1m_after']} (a shared machine: the "
             "ratios are measured in the same run)", "",
             "| runtime | decode+preprocess ms/video | encode ms/video | decode speedup | encode speedup | "
             "min cosine vs Python |", "|---|---|---|---|---|---|"]
    for row in rows.values():
        cos = row.get("min_cosine_vs_python")
        lines.append(f"| {row['backend']} | {row['decode_preprocess_ms_per_video']:.1f} | "
                     f"{row['encode_ms_per_video']:.1f} | {row['decode_speedup_vs_python']:.2f}x | "
                     f"{row['encode_speedup_vs_python']:.2f}x | {'-' if cos is None else f'{cos:.7f}'} |")
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "encode-timing.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "encode-timing.md", markdown)
    return report, markdown
