"""Backends, the encoder and `ts2net parity`: input checks, parity rows, batching, bad videos, TensorRT errors."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from runtime.backends import (
    BackendUnavailable,
    InputValidationError,
    OrtBackend,
    TensorRTBackend,
    available_backends,
    create_backend,
    engine_compatibility,
    feed_problems,
    profile_batch_range,
)
from runtime.bundle import BundleError, open_bundle, sha256_file
from runtime.encoder import BundleEncoder
from runtime.parity import compare_outputs
from cli.parity import parity_command
from media import write_video
from runtime.video import VideoDecodeError, load_video


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return open_bundle(bundle_dir)


def write_mp4(path: Path, frames: int, fps: int = 10, seed: int = 0, size=(64, 48)) -> Path:
    """A small real MPEG-4 clip of moving noise, written with PyAV."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return write_video(path, (np.roll(base, 2 * i, axis=1) for i in range(frames)), fps)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    files = {f"clip{i}": write_mp4(folder / f"clip{i}.mp4", frames=15 + 10 * i, seed=i) for i in range(3)}
    files["broken"] = folder / "broken.mp4"
    files["broken"].write_bytes(np.random.default_rng(7).bytes(4096))  # random bytes: not a container
    return files


# ------------------------------------------------------------------------------ input validation
def test_infer_lists_every_bad_input_at_once(bundle):
    backend = create_backend(bundle, "video")
    feed = {"frames": np.zeros((2, 12, 3, 32, 31), np.float64), "frame_mask": np.ones((3, 12), np.int64),
            "extra": np.zeros(1)}
    with pytest.raises(InputValidationError) as err:
        backend.infer(feed)
    message = str(err.value)
    assert len(err.value.problems) == 3
    assert "frames: expected float32 [batch, 12, 3, 32, 32], received float64 [2, 12, 3, 32, 31]" in message
    assert "axis 4 is 31, must be 32" in message
    assert "frame_mask: expected int64 [batch, 12], received int64 [3, 12]" in message and "batch=2" in message
    assert "extra: unexpected input" in message
    assert not backend._loaded  # checked before any session was created

    problems = feed_problems({"input_ids": np.zeros((0, 32), np.int64)}, bundle.inputs("text"))
    assert problems == ["input_ids: expected int64 [batch, 32], received int64 [0, 32] (axis 0 (batch) is 0, must be >= 1)"]
    problems = feed_problems({}, bundle.inputs("video"))
    assert [p.split(":")[0] for p in problems] == ["frames", "frame_mask"]
    assert feed_problems([1, 2], bundle.inputs("text"))[0].startswith("the feed must be a dict")


# ------------------------------------------------------------------------------ parity rows
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_cpu_meets_its_parity_row(bundle, precision):
    ref = bundle.reference()
    with create_backend(bundle, "text", "ort-cpu", precision) as text, \
            create_backend(bundle, "video", "ort-cpu", precision, threads=1) as video:
        produced = text.infer({"input_ids": ref["input_ids"]})
        produced.update(video.infer({"frames": ref["frames"], "frame_mask": ref["frame_mask"]}))
        assert text.last_latency_ms > 0 and video.last_latency_ms > 0
    produced["frame_mask"] = ref["frame_mask"]
    result = compare_outputs(ref, produced, precision, **bundle.similarity_args)
    assert result.passed, result.failures
    if precision == "fp32":
        assert result.figures["text_embeds"]["max_abs_err"] <= 1e-4
    assert result.figures["patch_indices"]["agreement"] >= 0.98


# ------------------------------------------------------------------------------ encoder
def test_encoder_batching_equals_unbatched(bundle):
    ref = bundle.reference()
    results = []
    for batch_size in (1, 4, 64):
        with BundleEncoder(bundle, batch_size=batch_size) as encoder:
            results.append((encoder.encode_ids(ref["input_ids"]), *encoder.encode_frames(ref["frames"], ref["frame_mask"])))
    for text, frames, indices in results[1:]:
        # rows are independent; only GEMM blocking could change the last float32 bits
        np.testing.assert_allclose(text, results[0][0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(frames, results[0][1], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(indices, results[0][2])


def test_encode_texts_uses_the_bundle_tokenizer(bundle):
    captions = [str(c) for c in bundle.reference()["captions"]]
    with BundleEncoder(bundle, batch_size=4) as encoder:
        embeds = encoder.encode_texts(captions)
        np.testing.assert_array_equal(embeds, encoder.encode_ids(bundle.reference()["input_ids"]))
        assert encoder.encode_texts([]).shape == (0, bundle.embed_dim)
        with pytest.raises(ValueError, match="max_words"):
            encoder.encode_ids(np.zeros((2, 7), np.int64))


def test_encode_video_files_raises_on_a_corrupt_video_or_skips_it(bundle, videos):
    paths = [videos["clip0"], videos["broken"], videos["clip2"]]
    with BundleEncoder(bundle, batch_size=2) as encoder:
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            encoder.encode_video_files(paths, progress=False)
        result = encoder.encode_video_files(paths, skip_bad=True, progress=False)
        assert result.paths == [str(videos["clip0"]), str(videos["clip2"])]
        assert result.ids == ["clip0", "clip2"]
        assert [p for p, _ in result.skipped] == [str(videos["broken"])] and result.skipped[0][1]
        decoded = [load_video(p, bundle.max_frames, bundle.image_size) for p in result.paths]
        frames, mask = np.stack([d[0] for d in decoded]), np.stack([d[1] for d in decoded])
        embeds, indices = encoder.encode_frames(frames, mask)
    np.testing.assert_array_equal(result.frame_mask, mask)
    np.testing.assert_allclose(result.frame_embeds, embeds, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.patch_indices, indices)
    assert mask[0].sum() == 2 and mask[1].sum() == 4  # 15 and 35 frames at 10 fps: 2 and 4 samples


# ------------------------------------------------------------------------------ backend availability
def test_tensorrt_absent_gives_a_clear_error(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if TensorRT were not installed
    with pytest.raises(BackendUnavailable) as err:
        create_backend(bundle, "video", "tensorrt")
    message = str(err.value)
    assert "TensorRT is not installed" in message and "pip install" in message
    assert "make engine" in message  # the bundle has no engine either: both problems at once
    status = {s.name: s for s in available_backends(bundle)}
    assert status["ort-cpu"].available
    assert not status["tensorrt"].available and "TensorRT is not installed" in status["tensorrt"].reason


def test_ort_cuda_without_the_gpu_package_names_onnxruntime_gpu(bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        OrtBackend(bundle, "text", device="cuda")
    status = {s.name: s for s in available_backends()}
    assert not status["ort-cuda"].available and "onnxruntime-gpu" in status["ort-cuda"].reason
    with pytest.raises(ValueError, match="expected one of"):
        create_backend(bundle, "text", "directml")  # openvino is a backend now


def test_engine_compatibility_checks_version_and_gpu():
    entry = {"file": "video.plan", "tensorrt_version": "10.7.0",
             "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert engine_compatibility(entry, "10.7.0.post1", [h100]) == ([], [])
    errors, _ = engine_compatibility(entry, "10.8.0", [h100])
    assert "built with TensorRT 10.7.0, this is TensorRT 10.8.0" in errors[0]
    errors, _ = engine_compatibility(entry, "10.7.0", [{"name": "NVIDIA L4", "compute_capability": "8.9"}])
    assert "compute capability 9.0" in errors[0] and "NVIDIA L4" in errors[0]
    errors, warnings = engine_compatibility(entry, "10.7.0", [{"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}])
    assert not errors and "H100 PCIe" in warnings[0]
    assert "no NVIDIA GPU" in engine_compatibility(entry, "10.7.0", [])[0][0]


def test_profile_batch_range_reads_the_manifest_forms(bundle):
    specs = bundle.inputs("video")
    assert profile_batch_range({"min": 1, "opt": 4, "max": 16}, specs) == (1, 16)
    shapes = {"min": {"frames": [2, 12, 3, 32, 32]}, "opt": {}, "max": {"frames": [8, 12, 3, 32, 32]}}
    assert profile_batch_range(shapes, specs) == (2, 8)
    assert profile_batch_range({"frames": {"min": [1, 12], "max": [4, 12]}}, specs) == (1, 4)
    assert profile_batch_range(None, specs) is None


class StandInTrtRunner:
    """Polygraphy's TrtRunner interface over ONNX Runtime, reusing its output buffers like the real one."""

    def __init__(self, engine, name=None):
        self.plan = engine()
        graph = json.loads(self.plan)["graph"]  # the stand-in plan names the FP16 graph it runs
        import onnxruntime

        self.session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.buffers = {}
        self.active = False

    def activate(self):
        self.active = True

    def infer(self, feed, check_inputs=True):
        assert self.active and all(v.flags.c_contiguous for v in feed.values())
        names = [o.name for o in self.session.get_outputs()]
        outputs = {}
        for name, value in zip(names, self.session.run(names, feed)):
            buffer = self.buffers.setdefault(name, np.empty(0, value.dtype))
            buffer.resize(value.size, refcheck=False)
            buffer[:] = value.ravel()
            outputs[name] = buffer.reshape(value.shape)  # a view: the next call overwrites it
        return outputs

    def deactivate(self):
        self.active = False


def test_tensorrt_backend_plumbing_with_a_stand_in_runner(bundle_dir, tmp_path, monkeypatch):
    """Everything around TensorRT (version/GPU checks, engine checksum, profile limits, buffer copies),
    run without a GPU: `tensorrt` and Polygraphy's runner are replaced by stand-ins over ONNX Runtime."""
    import types

    import runtime.gpu

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    for graph, batch in (("text", 4), ("video", 2)):
        plan = copy / f"{graph}.plan"
        plan.write_text(json.dumps({"graph": str(copy / f"{graph}.fp16.onnx")}))
        manifest["engines"][graph] = {"file": plan.name, "sha256": sha256_file(plan), "precision": "fp16",
                                      "tensorrt_version": "10.7.0", "profile": {"min": 1, "opt": 1, "max": batch},
                                      "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.7.0"
    fake_polygraphy = types.ModuleType("polygraphy.backend.trt")
    fake_polygraphy.EngineFromBytes = lambda data: (lambda: data)
    fake_polygraphy.TrtRunner = StandInTrtRunner
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", fake_polygraphy)
    monkeypatch.setattr(runtime.gpu, "cuda_device_zero", lambda: {"name": "NVIDIA H100 80GB HBM3",
                                                                   "compute_capability": "9.0"})
    bundle = open_bundle(copy)
    assert {s.name: s.available for s in available_backends(bundle)}["tensorrt"]
    ref = bundle.reference()

    with create_backend(bundle, "text", "tensorrt") as backend:
        assert backend.precision == "fp16" and backend.max_batch == 4
        with pytest.raises(InputValidationError, match="outside the engine's optimization profile 1..4"):
            backend.infer({"input_ids": ref["input_ids"][:5]})
        first = backend.infer({"input_ids": ref["input_ids"][:2]})["text_embeds"]
        kept = first.copy()
        backend.infer({"input_ids": ref["input_ids"][2:4]})
        np.testing.assert_array_equal(first, kept)  # not overwritten by the runner's next call
    with BundleEncoder(bundle, "tensorrt", batch_size=16) as encoder:  # batches clamp to each profile's max
        produced = {"text_embeds": encoder.encode_ids(ref["input_ids"]), "frame_mask": ref["frame_mask"]}
        produced["frame_embeds"], produced["patch_indices"] = encoder.encode_frames(ref["frames"], ref["frame_mask"])
    result = compare_outputs(ref, produced, "fp16", **bundle.similarity_args)
    assert result.passed, result.failures
    with pytest.raises(BundleError, match="TensorRT runs the precision"):
        create_backend(bundle, "text", "tensorrt", precision="fp32")

    fake_trt.__version__ = "10.8.1"
    with pytest.raises(BackendUnavailable, match="built with TensorRT 10.7.0, this is TensorRT 10.8.1"):
        create_backend(bundle, "video", "tensorrt")


@pytest.mark.trt
def test_tensorrt_engine_meets_the_fp16_row(bundle_dir, tmp_path):
    pytest.importorskip("tensorrt")
    engine = pytest.importorskip("export.engine")
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    engine.build_engines(copy)
    bundle = open_bundle(copy)
    ref = bundle.reference()
    with BundleEncoder(bundle, "tensorrt", batch_size=4) as encoder:
        produced = {"text_embeds": encoder.encode_ids(ref["input_ids"]), "frame_mask": ref["frame_mask"]}
        produced["frame_embeds"], produced["patch_indices"] = encoder.encode_frames(ref["frames"], ref["frame_mask"])
        assert isinstance(encoder.backend("text"), TensorRTBackend)
    result = compare_outputs(ref, produced, "fp16", **bundle.similarity_args)
    assert result.passed, result.failures


# ------------------------------------------------------------------------------ ts2net parity
def test_parity_cli_passes_and_writes_reports(bundle_dir, videos, tmp_path):
    csv = tmp_path / "captions.csv"
    csv.write_text("key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},clip{i},moving noise number {i}\n"
                                                               for i in range(3)) + "ret9,msr9,broken,a broken clip\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(parity_command, ["--bundle", str(bundle_dir), "--backend", "ort-cpu", "--precision",
                                                 "fp16", "--csv", str(csv), "--videos", str(csv.parent / ".."),
                                                 "--out", str(out), "--no-progress"])
    # the videos are in another folder: every video id is missing, so the check could not run (2, not 1)
    assert result.exit_code == 2 and "no readable video, so the comparison could not run" in result.output
    assert "PASS" not in result.output
    result = CliRunner().invoke(parity_command, ["--bundle", str(bundle_dir), "--precision", "fp16", "--csv", str(csv),
                                                 "--videos", str(videos["clip0"].parent), "--out", str(out),
                                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    # the console verdict names the video that was left out, not just PASS
    assert "1 video(s) could not be read and were left out with their captions (1 captions)" in result.output
    assert "! " in result.output and "broken.mp4: " in result.output
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["precision"] == "fp16" and report["environment"]["cpu"]["usable_cores"] >= 1
    real = report["real_data"]
    assert real["n_videos"] == 3 and [s["video_id"] for s in real["skipped_videos"]] == ["broken"]
    assert real["retrieval"]["top1_agreement"] == 1.0 and abs(real["retrieval"]["r1_delta_points"]) <= 0.5
    assert "stand-in" in real["reference"]
    markdown = (out / "parity.md").read_text()
    assert "PASS" in markdown and "broken.mp4" in markdown and "R@1 delta" in markdown


def test_parity_cli_fails_listing_every_output_of_a_swapped_graph(bundle_dir, tmp_path):
    """A video graph from a different-seed model, with its checksum fixed: checksums pass, parity must not."""
    import torch

    import ts2net
    from export.onnx_graphs import export_graph, save_graph
    from export.specs import graph_specs

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    torch.manual_seed(1)
    other = ts2net.TS2Net(ts2net.TS2NetConfig.from_dict(manifest["model"])).eval()
    save_graph(export_graph(other, graph_specs(other.cfg)["video"]), copy / "video.onnx")
    manifest["graphs"]["video"]["fp32"]["sha256"] = sha256_file(copy / "video.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "report"
    result = CliRunner().invoke(parity_command, ["--bundle", str(copy), "--backend", "ort-cpu", "--out", str(out),
                                                 "--no-progress"])
    assert result.exit_code == 1, result.output
    report = json.loads((out / "parity.json").read_text())
    assert not report["passed"]
    failed = " ".join(report["failures"])
    for output in ("frame_embeds", "patch_indices", "similarity"):
        assert output in failed, output
    assert "text_embeds" not in failed  # the text graph is untouched
    assert "FAIL" in (out / "parity.md").read_text()
