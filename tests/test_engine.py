"""`ts2net engine` around the TensorRT build: profiles, preflight errors, manifest handling.

The build itself needs TensorRT and a GPU; `test_real_engine_build` runs it where both exist
(marked `trt`), everything else runs anywhere.
"""
from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
from click.testing import CliRunner

import export.engine as engine
import runtime.gpu
from export.engine import BatchProfile, EngineBuildError, parse_batch_profiles
from cli.main import main as cli


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return bundle_dir


def test_batch_profiles_parse_per_graph_and_for_both():
    assert parse_batch_profiles([]) == engine.DEFAULT_PROFILES
    both = parse_batch_profiles(["1,8,32"])
    assert both["text"] == both["video"] == BatchProfile(1, 8, 32)
    mixed = parse_batch_profiles(["2,4,8", "video=1,2,4"])
    assert mixed["text"] == BatchProfile(2, 4, 8) and mixed["video"] == BatchProfile(1, 2, 4)
    for bad in ("1,2", "4,2,8", "0,1,2", "audio=1,2,3", "a,b,c"):
        with pytest.raises(ValueError, match="--batch"):
            parse_batch_profiles([bad])


def test_input_shapes_follow_the_manifest(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    video = manifest["graphs"]["video"]["fp16"]
    assert engine.input_shapes(video, 4) == {"frames": (4, 12, 3, 32, 32), "frame_mask": (4, 12)}


def test_missing_tensorrt_is_a_clear_error_and_leaves_the_manifest_untouched(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # importing tensorrt fails
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(EngineBuildError, match="TensorRT is not installed"):
        engine.build_engines(bundle, progress=False)
    result = CliRunner().invoke(cli, ["engine", "--bundle", str(bundle)])
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output
    assert (bundle / "manifest.json").read_bytes() == before
    assert not (bundle / "text.plan").exists()


def test_wrong_tensorrt_version_and_missing_gpu_are_refused(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(EngineBuildError, match="TensorRT 8.6.1 found"):
        engine.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(runtime.gpu, "cuda_device_zero", lambda: None)
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(EngineBuildError, match="no NVIDIA GPU found"):
        engine.build_engines(bundle, progress=False)
    assert (bundle / "manifest.json").read_bytes() == before


def test_invalid_bundles_are_refused(bundle, tmp_path):
    copy = tmp_path / "invalid"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["valid"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineBuildError, match="marked invalid"):
        engine.build_engines(copy, progress=False)


def test_engines_are_built_only_from_verified_fp16_graphs(bundle, tmp_path, monkeypatch):
    """An FP16 graph altered after export is refused before TensorRT is touched; the manifest stays as it was."""
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    graph = copy / "video.fp16.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    monkeypatch.setattr(engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0.34"))
    monkeypatch.setattr(engine, "gpu_facts", lambda: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    monkeypatch.setattr(engine, "build_engine", lambda *args: pytest.fail("built from an unverified graph"))
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(EngineBuildError, match="video.fp16.onnx does not match its checksum"):
        engine.build_engines(copy, progress=False)
    assert (copy / "manifest.json").read_bytes() == before
    result = CliRunner().invoke(cli, ["engine", "--bundle", str(copy)])
    assert result.exit_code == 2 and "does not match its checksum" in result.output


H100 = {"name": "NVIDIA H100", "compute_capability": "9.0"}


def stand_in_tensorrt(bundle, tmp_path, monkeypatch, gpu=H100, name="built"):
    """A copy of the bundle, with TensorRT 10.9 and `gpu` stood in (the build itself is patched per test)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    copy = tmp_path / name
    shutil.copytree(bundle, copy)
    monkeypatch.setattr(engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0.34"))
    monkeypatch.setattr(engine, "gpu_facts", lambda: dict(gpu))
    return copy


def test_manifest_records_the_build(bundle, tmp_path, monkeypatch):
    """The plumbing around the build, with the TensorRT call itself replaced by a stand-in."""
    copy = stand_in_tensorrt(bundle, tmp_path, monkeypatch)
    calls = []

    def fake_build(onnx_path, entry, profile, plan_path, workspace_mb, timing_cache, level):
        calls.append((onnx_path.name, profile, timing_cache.name, level))
        plan_path.write_bytes(b"engine bytes for " + onnx_path.name.encode())

    monkeypatch.setattr(engine, "build_engine", fake_build)
    profiles = parse_batch_profiles(["text=1,16,64", "video=1,4,8"])
    engine.build_engines(copy, profiles, workspace_mb=512, optimization_level=3, progress=False)
    assert [c[0] for c in calls] == ["text.fp16.onnx", "video.fp16.onnx"]
    assert all(c[2] == "timing-trt10.9.0-sm90.cache" and c[3] == 3 for c in calls)  # one cache, both builds
    manifest = json.loads((copy / "manifest.json").read_text())
    video = manifest["engines"]["video"]
    assert video["profile"] == {"min": 1, "opt": 4, "max": 8} and video["tensorrt_version"] == "10.9.0.34"
    assert video["gpu"] == {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert video["built_from"] == "video.fp16.onnx" and video["workspace_mb"] == 512
    from runtime.files import sha256_file
    assert video["sha256"] == sha256_file(copy / "video.plan")
    # the recorded precision is one every consumer knows (parity row, bundle lookup, bench peaks)
    from runtime.bundle import open_bundle
    from runtime.parity import THRESHOLDS

    for entry in manifest["engines"].values():
        assert entry["precision"] == "fp16" and entry["precision"] in THRESHOLDS
        assert entry["typing"] == "strongly typed from the FP16 graph"
    assert open_bundle(copy).engine_entry("video")["precision"] == "fp16"


@pytest.mark.trt
def test_real_engine_build(bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU driver")
    copy = tmp_path / "trt"
    shutil.copytree(bundle, copy)
    entries = engine.build_engines(copy, parse_batch_profiles(["1,2,4"]), progress=False)
    assert (copy / "text.plan").stat().st_size > 0 and entries["video"]["profile"]["max"] == 4


def _with_fake_engines(bundle, tmp_path, monkeypatch, profiles=None):
    copy = stand_in_tensorrt(bundle, tmp_path, monkeypatch)
    monkeypatch.setattr(engine, "build_engine", lambda onnx_path, entry, profile, plan_path, *a: plan_path.write_bytes(b"plan"))
    engine.build_engines(copy, profiles, progress=False)
    return copy


class _Stop(Exception):
    pass


def test_eval_and_index_run_the_engines_precision_with_tensorrt(bundle, tmp_path, monkeypatch):
    """`--backend tensorrt` without --precision means the engine's fp16, not the ORT default fp32."""
    import runtime.encoder
    from runtime.evaluation import evaluate
    from runtime.index import build_index
    from test_eval import write_1ka_csv, write_clip

    copy = _with_fake_engines(bundle, tmp_path, monkeypatch)
    seen = []

    class Recorder:
        def __init__(self, bundle, backend="ort-cpu", precision=None, **kwargs):
            seen.append((backend, precision))
            raise _Stop

    monkeypatch.setattr(runtime.encoder, "BundleEncoder", Recorder)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "video0.mp4", (200, 30, 30), 1.0)
    with pytest.raises(_Stop):
        build_index(copy, videos, tmp_path / "index", backend="tensorrt", cache_dir=False, progress=False)
    csv_path = write_1ka_csv(tmp_path / "test.csv", n=1)
    with pytest.raises(_Stop):
        evaluate(copy, csv_path, videos, backend="tensorrt", cache_dir=False, progress=False, write=False)
    with pytest.raises(_Stop):
        build_index(copy, videos, tmp_path / "index", cache_dir=False, progress=False)
    assert seen == [("tensorrt", "fp16"), ("tensorrt", "fp16"), ("ort-cpu", "fp32")]


def test_an_engine_entry_with_an_unknown_precision_is_a_clear_bundle_error(bundle, tmp_path, monkeypatch):
    from runtime.bundle import BundleError, open_bundle

    copy = _with_fake_engines(bundle, tmp_path, monkeypatch)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["engines"]["text"]["precision"] = "fp16 (strongly typed from the FP16 graph)"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="engines.text.precision.*rebuild it with `ts2net engine`"):
        open_bundle(copy)


# ---------------------------------------------------------------- Polygraphy loaders and floor (item 4)

def test_polygraphy_loaders_construct_with_our_arguments(bundle, tmp_path):
    """The real CreateConfig / NetworkFromOnnxPath, built with exactly the arguments build_engine passes."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath

    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["graphs"]["video"]["fp16"]
    trt = types.SimpleNamespace(MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"))
    cache = tmp_path / "timing.cache"
    network, config = engine.engine_loaders(trt, bundle / "video.fp16.onnx", entry, BatchProfile(1, 4, 8), 512,
                                            cache, 3)
    assert isinstance(network, NetworkFromOnnxPath) and isinstance(config, CreateConfig)
    assert network.strongly_typed is True and network.path == str(bundle / "video.fp16.onnx")
    assert config.builder_optimization_level == 3 and config.timing_cache_path == str(cache)
    assert config.memory_pool_limits == {"WORKSPACE": 512 << 20}
    profile = config.profiles[0]
    assert tuple(profile["frames"].min) == (1, 12, 3, 32, 32) and tuple(profile["frames"].max) == (8, 12, 3, 32, 32)
    assert tuple(profile["frame_mask"].opt) == (4, 12)
    # strongly typed: the precision comes from the graph, no precision flag is set
    assert not config.fp16 and not config.int8 and not config.bf16


def test_polygraphy_floor_for_tensorrt_11(monkeypatch):
    import tomllib
    from pathlib import Path

    engine.check_polygraphy("10.9.0.34", "0.49.27")          # TensorRT 10 still works with older Polygraphy
    engine.check_polygraphy("11.1.0.5", "0.53.4")
    with pytest.raises(EngineBuildError, match=r"Polygraphy 0.49.27 cannot build with TensorRT 11.1.0.*>=0.53.4"):
        engine.check_polygraphy("11.1.0.5", "0.49.27")
    import polygraphy
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.1.0.5"))
    monkeypatch.setattr(polygraphy, "__version__", "0.53.3")
    with pytest.raises(EngineBuildError, match="precision_is_set"):
        engine.import_tensorrt()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert "polygraphy>=0.53.4" in extras["tensorrt"]


# ---------------------------------------------------------------- GPU identity (item 5)

class FakeLibcuda:
    """Stand-in for libcuda.so.1: devices in CUDA order (after CUDA_VISIBLE_DEVICES)."""

    def __init__(self, devices):
        self.devices = devices

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, ref):
        ref._obj.value = len(self.devices)
        return 0

    def cuDeviceGet(self, ref, index):
        ref._obj.value = index
        return 0

    def cuDeviceGetName(self, buffer, size, device):
        buffer.value = self.devices[device.value][0].encode()
        return 0

    def cuDeviceGetAttribute(self, ref, attribute, device):
        major, minor = self.devices[device.value][1]
        ref._obj.value = {75: major, 76: minor}[attribute]
        return 0


def test_gpu_identity_is_cuda_device_zero_from_the_driver(monkeypatch):
    import ctypes
    import subprocess

    from runtime import backends
    from runtime import gpu

    # nvidia-smi (PCI order, ignores CUDA_VISIBLE_DEVICES) would say A100; CUDA device 0 is the L4
    smi_rows = "NVIDIA A100-SXM4-80GB, 8.0\nNVIDIA L4, 8.9\n"
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(gpu.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=smi_rows, stderr=""))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibcuda([("NVIDIA L4", (8, 9)), ("NVIDIA A100", (8, 0))]))
    assert engine.gpu_facts() == {"name": "NVIDIA L4", "compute_capability": "8.9"}
    assert [(g["name"], g["compute_capability"]) for g in backends.tensorrt_gpus()] == [("NVIDIA L4", "8.9")]

    # no loadable libcuda: nvidia-smi, row chosen by CUDA_VISIBLE_DEVICES
    def no_lib(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_lib)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert engine.gpu_facts() == {"name": "NVIDIA L4", "compute_capability": "8.9"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert engine.gpu_facts()["name"] == "NVIDIA A100-SXM4-80GB"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(EngineBuildError, match="no NVIDIA GPU found"):
        engine.gpu_facts()
    assert backends.tensorrt_gpus() == []


# ---------------------------------------------------------------- atomic builds, errors (item 6)

def test_a_failed_video_build_leaves_the_old_plans_and_manifest(bundle, tmp_path, monkeypatch):
    copy = _with_fake_engines(bundle, tmp_path, monkeypatch)
    before = {name: (copy / name).read_bytes() for name in ("manifest.json", "text.plan", "video.plan")}

    def text_then_fail(onnx_path, entry, profile, plan_path, *args):
        if onnx_path.name.startswith("video"):
            raise EngineBuildError("video.fp16.onnx: TensorRT could not parse or build this graph (stand-in)")
        plan_path.write_bytes(b"a NEW text plan")

    monkeypatch.setattr(engine, "build_engine", text_then_fail)
    with pytest.raises(EngineBuildError, match="video.fp16.onnx"):
        engine.build_engines(copy, progress=False)
    assert {name: (copy / name).read_bytes() for name in before} == before
    assert not [p.name for p in copy.iterdir() if p.name.startswith(".")]   # no staged plans left
    from runtime.bundle import open_bundle
    open_bundle(copy)                                                          # checksums still match


def test_polygraphy_failures_become_engine_build_errors_naming_the_graph(bundle, tmp_path, monkeypatch):
    import polygraphy.backend.trt as ptrt
    from polygraphy.exception import PolygraphyException

    monkeypatch.setattr(engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0.34"))

    def parse_fails(network, config, save_timing_cache=None):
        raise PolygraphyException("In node 12 (parseGraph): UNSUPPORTED_NODE")

    monkeypatch.setattr(ptrt, "engine_from_network", parse_fails)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with pytest.raises(EngineBuildError, match=r"video.fp16.onnx: TensorRT could not parse or build.*UNSUPPORTED_NODE"):
        engine.build_engine(bundle / "video.fp16.onnx", manifest["graphs"]["video"]["fp16"], BatchProfile(1, 2, 4),
                            tmp_path / "video.plan", None, None, None)


def _trt_backend(copy, graph, monkeypatch):
    from runtime import backends
    from runtime.bundle import open_bundle

    monkeypatch.setattr(backends, "tensorrt_status", lambda: ("10.9.0.34", ""))
    monkeypatch.setattr(backends, "tensorrt_gpus", lambda: [{"name": "NVIDIA H100", "compute_capability": "9.0"}])
    return backends.TensorRTBackend(open_bundle(copy), graph)


def test_an_engine_that_does_not_deserialize_is_a_backend_error(bundle, tmp_path, monkeypatch):
    import polygraphy.backend.trt as ptrt
    from polygraphy.exception import PolygraphyException

    from runtime.backends import BackendUnavailable

    copy = _with_fake_engines(bundle, tmp_path, monkeypatch)
    backend = _trt_backend(copy, "text", monkeypatch)

    class BadRunner:
        def __init__(self, *args, **kwargs):
            pass

        def activate(self):
            raise PolygraphyException("Failed to deserialize engine: serialization version mismatch")

    monkeypatch.setattr(ptrt, "TrtRunner", BadRunner)
    with pytest.raises(BackendUnavailable, match=r"text.plan: TensorRT could not deserialize the text engine"):
        backend.load()


# ---------------------------------------------------------------- profiles with MIN > 1 (item 7)

def test_batches_below_the_profile_min_are_padded_and_the_padding_dropped(bundle, tmp_path, monkeypatch):
    import numpy as np

    from runtime.backends import InputValidationError

    copy = _with_fake_engines(bundle, tmp_path, monkeypatch, parse_batch_profiles(["text=4,8,16"]))
    backend = _trt_backend(copy, "text", monkeypatch)
    seen = []

    class Runner:  # rows are independent: each output row is a function of its own input row
        def infer(self, feed, check_inputs=False):
            ids = feed["input_ids"]
            seen.append(ids.shape[0])
            assert 4 <= ids.shape[0] <= 16
            return {name: np.repeat(ids.sum(axis=1, keepdims=True).astype(np.float32), 16, axis=1)
                    for name in backend.output_names}

    backend._runner, backend._loaded = Runner(), True
    length = backend.input_specs[0]["shape"][1]
    rng = np.random.default_rng(0)
    for batch in (1, 3, 4, 16):                               # below MIN, at MIN, at MAX
        ids = rng.integers(0, 100, (batch, length)).astype(np.int64)
        out = backend.infer({"input_ids": ids})
        for value in out.values():
            assert value.shape[0] == batch
            np.testing.assert_array_equal(value[:, 0], ids.sum(axis=1).astype(np.float32))
    assert seen == [4, 4, 4, 16]
    with pytest.raises(InputValidationError, match="outside the engine's optimization profile 4..16"):
        backend.infer({"input_ids": np.zeros((17, length), np.int64)})


# ---------------------------------------------------------------- timing cache (item 9)

def test_timing_cache_is_named_by_tensorrt_and_gpu_and_kept_out_of_the_bundle(bundle, tmp_path, monkeypatch):
    copy = stand_in_tensorrt(bundle, tmp_path, monkeypatch, gpu={"name": "NVIDIA L4", "compute_capability": "8.9"})
    used = []

    def fake_build(onnx_path, entry, profile, plan_path, workspace_mb, timing_cache, level):
        used.append(timing_cache)
        timing_cache.write_bytes(b"tactics")
        timing_cache.with_name(timing_cache.name + ".lock").write_bytes(b"")   # what Polygraphy leaves
        plan_path.write_bytes(b"plan")

    monkeypatch.setattr(engine, "build_engine", fake_build)
    entries = engine.build_engines(copy, progress=False)
    cache = tmp_path / "xdg" / "ts2net-deploy" / "tensorrt" / "timing-trt10.9.0-sm89.cache"
    assert used == [cache, cache] and cache.is_file()
    assert not cache.with_name(cache.name + ".lock").exists()
    assert not any(p.name.startswith("timing") for p in copy.iterdir())   # nothing unlisted in the bundle
    assert entries["text"]["timing_cache"] == {
        "path": str(cache), "tensorrt_version": "10.9.0.34", "compute_capability": "8.9",
        "note": "outside the bundle, not checksummed: it only speeds up rebuilds"}
