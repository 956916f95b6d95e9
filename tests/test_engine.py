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
    monkeypatch.setattr(runtime.gpu, "gpus", lambda: ())
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(EngineBuildError, match="no NVIDIA GPU is visible"):
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


def test_manifest_records_the_build(bundle, tmp_path, monkeypatch):
    """The plumbing around the build, with the TensorRT call itself replaced by a stand-in."""
    copy = tmp_path / "built"
    shutil.copytree(bundle, copy)
    monkeypatch.setattr(engine, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.0.34"))
    monkeypatch.setattr(engine, "gpu_facts", lambda: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    calls = []

    def fake_build(onnx_path, entry, profile, plan_path, workspace_mb, timing_cache, level):
        calls.append((onnx_path.name, profile, timing_cache.name, level))
        plan_path.write_bytes(b"engine bytes for " + onnx_path.name.encode())

    monkeypatch.setattr(engine, "build_engine", fake_build)
    profiles = parse_batch_profiles(["text=1,16,64", "video=1,4,8"])
    engine.build_engines(copy, profiles, workspace_mb=512, optimization_level=3, progress=False)
    assert [c[0] for c in calls] == ["text.fp16.onnx", "video.fp16.onnx"]
    assert all(c[2] == "timing.cache" and c[3] == 3 for c in calls)     # one timing cache reused by both builds
    manifest = json.loads((copy / "manifest.json").read_text())
    video = manifest["engines"]["video"]
    assert video["profile"] == {"min": 1, "opt": 4, "max": 8} and video["tensorrt_version"] == "10.9.0.34"
    assert video["gpu"] == {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert video["built_from"] == "video.fp16.onnx" and video["workspace_mb"] == 512
    from runtime.files import sha256_file
    assert video["sha256"] == sha256_file(copy / "video.plan")


@pytest.mark.trt
def test_real_engine_build(bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU driver")
    copy = tmp_path / "trt"
    shutil.copytree(bundle, copy)
    entries = engine.build_engines(copy, parse_batch_profiles(["1,2,4"]), progress=False)
    assert (copy / "text.plan").stat().st_size > 0 and entries["video"]["profile"]["max"] == 4
