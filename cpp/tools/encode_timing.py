"""C++ (ts2net-cpp) vs Python runtime: decode + preprocess and encode time per video, same files.

    python cpp/tools/encode_timing.py --bundle bundles/demo --annotations data/synth/test.csv \
        --videos data/synth/videos --first 100 --out reports/demo/cpp

Both sides decode sequentially (one thread) with the official 1 fps rule and encode FP32 in
batches of the same size on all cores: Python with runtime.video.load_video and BundleEncoder
(ONNX Runtime CPU), C++ with `ts2net-cpp encode` (FFmpeg + OpenVINO, INFERENCE_PRECISION_HINT
f32; also int8 where the bundle has INT8 graphs and bf16 where the CPU has it). The embeddings of
the two are compared too (cosine per real frame). Writes encode-timing.json and encode-timing.md; the CPU model and the load average are
recorded, since these machines are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.bundle import open_bundle
from runtime.datasets import load_retrieval_set
from runtime.encoder import BundleEncoder
from runtime.files import atomic_write_text
from runtime.video import load_video


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
        raise SystemExit(f"ts2net-cpp encode ({precision}) failed: {result.stderr.strip()}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--videos", type=Path, required=True)
    parser.add_argument("--first", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cli", type=Path, default=Path("cpp/build/ts2net-cpp"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    data = load_retrieval_set(args.annotations, args.videos)
    paths = [str(data.video_paths[v]) for v in data.video_ids[:args.first]]
    load_before = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["python"], py_embeds, py_mask = python_timing(args.bundle, paths, args.batch)
        rows["cpp-fp32"], cpp_embeds, cpp_mask = cpp_timing(args.cli, args.bundle, paths, args.batch, "fp32", Path(tmp))
        if not np.array_equal(py_mask, cpp_mask):
            raise SystemExit("C++ and Python frame masks differ on the same videos")
        rows["cpp-fp32"]["min_cosine_vs_python"] = min_cosine(cpp_embeds, py_embeds, py_mask)
        if "int8" in open_bundle(args.bundle).manifest["graphs"]["video"]:
            rows["cpp-int8"], i8_embeds, _ = cpp_timing(args.cli, args.bundle, paths, args.batch, "int8", Path(tmp))
            rows["cpp-int8"]["min_cosine_vs_python"] = min_cosine(i8_embeds, py_embeds, py_mask)
        if bf16_available():
            rows["cpp-bf16"], bf_embeds, _ = cpp_timing(args.cli, args.bundle, paths, args.batch, "bf16", Path(tmp))
            rows["cpp-bf16"]["min_cosine_vs_python"] = min_cosine(bf_embeds, py_embeds, py_mask)
    py = rows["python"]
    for name, row in rows.items():
        row["decode_speedup_vs_python"] = py["decode_preprocess_ms_per_video"] / row["decode_preprocess_ms_per_video"]
        row["encode_speedup_vs_python"] = py["encode_ms_per_video"] / row["encode_ms_per_video"]
    report = {"bundle": str(args.bundle), "videos": len(paths), "batch": args.batch, "cpu": cpu_model(),
              "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "decode_threads": 1, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "encode-timing.json", json.dumps(report, indent=2) + "\n")
    lines = [f"# C++ vs Python encode time ({len(paths)} videos of {args.annotations.name}, batch {args.batch})", "",
             f"CPU: {report['cpu']}, {report['cores']} cores; load average before {load_before[0]:.1f}, after "
             f"{report['load_average_after'][0]:.1f} (shared machine: ratios are measured in the same run).", "",
             "| runtime | decode+preprocess ms/video | encode ms/video | decode speedup | encode speedup | "
             "min cosine vs Python |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cos = row.get("min_cosine_vs_python")
        lines.append(f"| {row['backend']} | {row['decode_preprocess_ms_per_video']:.1f} | "
                     f"{row['encode_ms_per_video']:.1f} | {row['decode_speedup_vs_python']:.2f}x | "
                     f"{row['encode_speedup_vs_python']:.2f}x | {'-' if cos is None else f'{cos:.7f}'} |")
    atomic_write_text(args.out / "encode-timing.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
