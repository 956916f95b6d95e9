"""`ts2net bench` and its FLOP count."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.bench import bench_command
from runtime.benchmark import model_flops, ratios

TINY = {"image_size": 32, "patch_size": 8, "vision_width": 64, "vision_layers": 3, "text_width": 64,
        "text_layers": 2, "embed_dim": 64, "top_k": 3, "temporal_layers": 2, "max_frames": 12, "max_words": 32,
        "token_selection": True}


def test_model_flops_matches_a_hand_count_of_the_tiny_config():
    # text: 32 tokens, width 64, 2 blocks; per block (rows x inner x cols multiply-adds):
    qkv, out, fc, proj = 32 * 64 * 192, 32 * 64 * 64, 32 * 64 * 256, 32 * 256 * 64
    scores = values = 32 * 32 * 64            # QK^T and attention @ V, all heads together
    text_block = qkv + out + fc + proj + scores + values   # 1,703,936
    text = 2 * text_block + 32 * 64 * 64      # + ln_final @ text_projection on every position
    assert model_flops(TINY, "text") == 2 * text == 7_077_888

    # video, per frame: 4x4 patches of 8x8x3 -> 64 channels, then 17 tokens through 3 blocks of width 64
    conv = 16 * (3 * 8 * 8) * 64
    block = 17 * 64 * 192 + 17 * 64 * 64 + 17 * 64 * 256 + 17 * 256 * 64 + 2 * 17 * 17 * 64
    head = 17 * 64 * 64                        # ln_post @ proj on all 17 tokens
    selector = 17 * 64 * 32 + 17 * 64 * 32 + 17 * 32 * 1
    frame = conv + 3 * block + head + selector
    # temporal transformer: 12 frames x 4 kept tokens = 48 tokens, width 64, 2 blocks
    temporal = 2 * (48 * 64 * 192 + 48 * 64 * 64 + 48 * 64 * 256 + 48 * 256 * 64 + 2 * 48 * 48 * 64)
    assert model_flops(TINY, "video") == 2 * (12 * frame + temporal) == 81_516_288

    no_selection = dict(TINY, token_selection=False)  # CLS only: 12 tokens in the temporal transformer, no selector
    temporal_cls = 2 * (12 * 64 * 192 + 12 * 64 * 64 + 12 * 64 * 256 + 12 * 256 * 64 + 2 * 12 * 12 * 64)
    assert model_flops(no_selection, "video") == 2 * (12 * (conv + 3 * block + head) + temporal_cls)
    with pytest.raises(ValueError):
        model_flops(TINY, "audio")


def onnx_matmul_flops(path, batch: int = 1) -> int:
    """Independent count: 2 x multiply-adds of every MatMul/Gemm/Conv of an exported graph at a batch size."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = batch
    del model.graph.value_info[:]
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            a, b, out = (shapes[n] for n in (node.input[0], node.input[1], node.output[0]))
            assert all(out) and all(a), f"{node.name}: unknown shape"
            inner = int(np.prod(b[1:])) if node.op_type == "Conv" else a[-1]
            total += int(np.prod(out)) * inner
    return 2 * total


def test_model_flops_matches_the_exported_graphs(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for graph in ("text", "video"):
        assert model_flops(manifest["model"], graph) == onnx_matmul_flops(bundle_dir / f"{graph}.onnx"), graph


def test_ratios_come_from_the_same_rows():
    rows = [{"graph": "text", "backend": "ort-cpu", "precision": "fp32", "batch": 1, "p50_ms": 2.0},
            {"graph": "text", "backend": "ort-cpu", "precision": "fp16", "batch": 1, "p50_ms": 4.0},
            {"graph": "text", "backend": "torch-eager", "precision": "fp32", "batch": 1, "p50_ms": 5.0}]
    found = {r["ratio"]: r["value"] for r in ratios(rows)}
    assert found == {"torch eager fp32 / ort-cpu fp32": 2.5, "torch eager fp32 / ort-cpu fp16": 1.25,
                     "ort-cpu fp32 / fp16": 0.5}


def test_bench_command_writes_json_markdown_and_chart(bundle_dir, tmp_path):
    """Every PyTorch option and every deployed backend x precision in one run, each with its own peak."""
    from runtime.openvino_backend import precision_status

    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_command, [
        "--bundle", str(bundle_dir), "--batch-sizes", "1,2", "--warmup", "1", "--iters", "3",
        "--peak-sizes", "128,256", "--torch", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    configs = {(r["graph"], r["backend"], r["precision"], r["batch"]) for r in report["results"]}
    bf16 = precision_status("bf16")[0]
    paths = [("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8"), ("openvino", "fp32"),
             ("openvino", "int8"), ("torch-eager", "fp32"), ("torch-eager", "bf16")] + ([("openvino", "bf16")] if bf16
                                                                                         else [])
    expected = {(g, b, p, n) for g in ("text", "video") for b, p in paths for n in (1, 2)}
    assert configs == expected
    peak = report["peaks"]["ort-cpu"]["fp32"]
    assert set(peak["gflops_by_size"]) == {"128", "256"} and peak["best_gflops"] > 0
    for backend, precision in paths:  # each row's peak is its own precision's, measured in this run
        if (backend, precision) != ("ort-cpu", "fp16"):
            assert report["peaks"][backend][precision]["best_gflops"] > 0, (backend, precision)
    assert report["peaks"]["ort-cpu"]["int8"]["dtype"].startswith("uint8 x int8")
    for row in report["results"]:
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["gflops"] > 0 and row["pct_of_peak"] > 0 and row["items_per_s"] > 0
    keys = {(r["ratio"], r["graph"], r["batch"]) for r in report["ratios"]}
    for graph in ("text", "video"):
        for backend, precision in paths:
            if backend != "torch-eager":
                for base in ("fp32", "bf16"):
                    assert (f"torch eager {base} / {backend} {precision}", graph, 1) in keys
    fastest = {(r["graph"], r["batch"]): r for r in report["fastest_gated"]}
    assert set(fastest) == {(g, n) for g in ("text", "video") for n in (1, 2)}
    assert all(r["vs_torch_eager_fp32"] > 0 and r["vs_torch_eager_bf16"] > 0 for r in fastest.values())
    assert {s["backend"] for s in report["skipped"]} <= {"ort-cuda", "tensorrt", "torch-compile", "openvino bf16"}
    assert report["flops_per_item"]["video"] == model_flops(report["bundle"]["config"], "video")
    assert report["uptime"] is None or "load average" in report["uptime"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "bench.md").read_text()
    assert "% of peak" in markdown and "vs torch-eager fp32 | vs torch-eager bf16" in markdown
    assert "Fastest gated path" in markdown


def test_bench_rejects_unknown_backends(bundle_dir):
    result = CliRunner().invoke(bench_command, ["--bundle", str(bundle_dir), "--backends", "ort-cpu,cudnn"])
    assert result.exit_code == 2 and "cudnn" in result.output


def test_bench_refuses_batch_sizes_that_cannot_fit_in_memory(bundle_dir, tmp_path):
    from runtime.benchmark import memory as bench
    from runtime.bundle import open_bundle

    bundle = open_bundle(bundle_dir)
    one = bench.batch_memory_bytes(bundle, "video", 1)
    entry = bundle.graph_entry("video")
    frames = next(t for t in entry["inputs"] if t["name"] == "frames")
    assert one > 4 * int(np.prod(frames["shape"][1:]))              # at least the frames themselves
    assert bench.batch_memory_bytes(bundle, "video", 1000) == 1000 * one
    with pytest.raises(ValueError, match=r"--batch-sizes 100000: needs about [\d.]+ GiB .* 1.0 GiB are available; "
                                         r"use batch sizes up to \d+"):
        bench.check_batch_sizes_fit(bundle, [1, 100000], available=2**30)
    bench.check_batch_sizes_fit(bundle, [1, 8], available=2**30)
    result = CliRunner().invoke(bench_command, [ "--bundle", str(bundle_dir), "--batch-sizes", "1,100000000",
                                       "--no-torch", "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 1 and "--batch-sizes 100000000: needs about" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
