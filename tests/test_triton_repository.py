"""`ts2net triton`: Triton model repositories per backend, read back as protobuf, and the validator.

Configs are read back with tritonclient's ModelConfig protobuf (not with our writer's code) and
compared with the manifest; the TensorRT path uses a copied bundle whose manifest lists stand-in
plan files (TensorRT cannot run here: the repository writer only copies and describes plans).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cli.main import main
from runtime.files import sha256_file
from runtime.triton.client import metadata_problems
from runtime.triton.repository import TritonRepositoryError, write_repository
from runtime.triton.validate import check_repository

TYPES = {"float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64}


def read_config(path: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def edit_config(path: Path, change) -> None:
    config = read_config(path)
    change(config)
    path.write_text(text_format.MessageToString(config))


@pytest.fixture
def plan_bundle(bundle_dir, tmp_path) -> Path:
    """A bundle copy whose manifest lists TensorRT engines (stand-in plan bytes, real checksums)."""
    path = Path(shutil.copytree(bundle_dir, tmp_path / "plan-bundle"))
    manifest = json.loads((path / "manifest.json").read_text())
    profiles = {"text": {"min": 1, "opt": 8, "max": 32}, "video": {"min": 1, "opt": 2, "max": 8}}
    for graph in ("text", "video"):
        plan = path / f"{graph}.plan"
        plan.write_bytes(f"stand-in {graph} engine".encode() * 100)
        fp16 = manifest["graphs"][graph]["fp16"]
        manifest["engines"][graph] = {
            "file": plan.name, "sha256": sha256_file(plan), "bytes": plan.stat().st_size,
            "precision": "fp16", "built_from": fp16["file"],
            "tensorrt_version": "10.9.0", "gpu": {"name": "NVIDIA L4", "compute_capability": "8.9"},
            "profile": profiles[graph], "inputs": fp16["inputs"], "outputs": fp16["outputs"]}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return path


@pytest.mark.parametrize("backend,precision", [("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                               ("openvino", "fp32")])
def test_onnx_repositories_follow_the_manifest(bundle_dir, tmp_path, backend, precision):
    repo = write_repository(bundle_dir, tmp_path / "repo", backend=backend, precision=precision, instances=2)
    assert check_repository(repo) == []
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for graph, name, max_batch, preferred in (("text", "ts2net_text", 64, [16, 64]),
                                              ("video", "ts2net_video", 16, [4, 16])):
        entry = manifest["graphs"][graph][precision]
        config = read_config(repo / name / "config.pbtxt")
        assert config.name == name and config.max_batch_size == max_batch
        if backend == "onnxruntime":
            assert (config.platform, config.backend) == ("onnxruntime_onnx", "")
        else:
            assert (config.platform, config.backend) == ("", "openvino")
        assert config.default_model_filename == "model.onnx"
        assert sha256_file(repo / name / "1" / "model.onnx") == entry["sha256"]
        for tensors, specs in ((config.input, entry["inputs"]), (config.output, entry["outputs"])):
            assert [(t.name, t.data_type, list(t.dims)) for t in tensors] == [
                (s["name"], TYPES[s["dtype"]], s["shape"][1:]) for s in specs]
        assert list(config.dynamic_batching.preferred_batch_size) == preferred
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert [(g.count) for g in config.instance_group] == [2]
        assert [w.batch_size for w in config.model_warmup] == [1, max_batch]
        for warmup in config.model_warmup:
            assert sorted(warmup.inputs) == sorted(s["name"] for s in entry["inputs"])
            assert all(i.zero_data for i in warmup.inputs.values())
        assert config.parameters["ts2net_precision"].string_value == precision
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository={repo}" in readme
    assert "curl -s -X POST localhost:8000/v2/models/ts2net_text/infer" in readme and "tritonclient" in readme


def test_tensorrt_repository_from_engine_entries(plan_bundle, tmp_path):
    repo = write_repository(plan_bundle, tmp_path / "repo", backend="tensorrt")
    assert check_repository(repo) == []
    manifest = json.loads((plan_bundle / "manifest.json").read_text())
    for graph, name, max_batch, preferred in (("text", "ts2net_text", 32, [8, 32]), ("video", "ts2net_video", 8, [2, 8])):
        config = read_config(repo / name / "config.pbtxt")
        engine = manifest["engines"][graph]
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert (repo / name / "1" / "model.plan").read_bytes() == (plan_bundle / f"{graph}.plan").read_bytes()
        assert config.max_batch_size == max_batch and list(config.dynamic_batching.preferred_batch_size) == preferred
        assert dict(config.cc_model_filenames) == {"8.9": "model.plan"}
        assert config.parameters["ts2net_compute_capability"].string_value == "8.9"
        assert config.parameters["ts2net_tensorrt_version"].string_value == "10.9.0"
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert [(t.name, list(t.dims)) for t in config.input] == [(s["name"], s["shape"][1:]) for s in engine["inputs"]]
    assert "compute capability **8.9**" in (repo / "README.md").read_text()

    with pytest.raises(TritonRepositoryError, match="profile ends at batch 32"):
        write_repository(plan_bundle, tmp_path / "too-big", backend="tensorrt", max_batch=64)
    assert not (tmp_path / "too-big").exists()
    # a config edited past the profile is caught
    edit_config(repo / "ts2net_text" / "config.pbtxt", lambda c: setattr(c, "max_batch_size", 64))
    problems = check_repository(repo)
    assert any("max_batch_size 64 exceeds the engine's optimization profile max 32" in p for p in problems), problems


def test_tensorrt_needs_engines(bundle_dir, tmp_path):
    with pytest.raises(TritonRepositoryError, match="no TensorRT engines.*make engine"):
        write_repository(bundle_dir, tmp_path / "repo", backend="tensorrt")
    with pytest.raises(TritonRepositoryError, match="no int4 onnxruntime models"):
        write_repository(bundle_dir, tmp_path / "repo", precision="int4")


def test_validator_lists_a_wrong_dim_a_wrong_dtype_and_a_missing_file_at_once(bundle_dir, tmp_path):
    repo = write_repository(bundle_dir, tmp_path / "repo")

    def wrong_dim(config):
        config.input[0].dims[0] = 31

    def wrong_dtype(config):
        config.output[0].data_type = mc.TYPE_FP16

    edit_config(repo / "ts2net_text" / "config.pbtxt", wrong_dim)
    edit_config(repo / "ts2net_video" / "config.pbtxt", wrong_dtype)
    (repo / "ts2net_video" / "1" / "model.onnx").unlink()
    problems = check_repository(repo)
    text = "\n".join(problems)
    assert "ts2net_text/config.pbtxt: input 'input_ids' has dims [31], the graph model.onnx has [32]" in text
    assert "input 'input_ids' has dims [31], the manifest entry recorded at writing has [32]" in text
    assert "ts2net_video/config.pbtxt: output 'frame_embeds' has data_type TYPE_FP16" in text
    assert "ts2net_video/1/model.onnx: model file missing" in text
    result = CliRunner().invoke(main, ["triton", "--check", str(repo)])
    assert result.exit_code == 1
    assert f"{len(problems)} problem(s)" in result.output and "TYPE_FP16" in result.output
    assert "model file missing" in result.output and "Traceback" not in result.output


def test_validator_catches_unparseable_config_altered_graph_and_renamed_model(bundle_dir, tmp_path):
    repo = write_repository(bundle_dir, tmp_path / "repo")
    (repo / "ts2net_text" / "config.pbtxt").write_text("name: \"ts2net_text\"\nmax_batch_size: lots\n")
    with open(repo / "ts2net_video" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    problems = check_repository(repo)
    assert any("ts2net_text/config.pbtxt: does not parse as a Triton ModelConfig" in p for p in problems), problems
    assert any("sha256 differs from the bundle file it was copied from (video.onnx)" in p for p in problems), problems
    assert check_repository(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}: not a directory (a Triton model "
                                                      "repository is a folder of model folders)"]


def test_altered_bundle_file_is_refused_and_an_existing_repository_survives(bundle_dir, tmp_path):
    bundle = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    repo = write_repository(bundle, tmp_path / "repo")
    before = sha256_file(repo / "ts2net_text" / "config.pbtxt")
    with pytest.raises(TritonRepositoryError, match="exists; pass --force"):
        write_repository(bundle, repo)
    with open(bundle / "text.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(TritonRepositoryError, match="text.onnx: sha256 .* does not match the manifest"):
        write_repository(bundle, repo, force=True, instances=3)
    assert sha256_file(repo / "ts2net_text" / "config.pbtxt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "repo"]  # no staging folder left behind


def test_cli_writes_and_checks(bundle_dir, tmp_path):
    runner = CliRunner()
    repo = tmp_path / "repo"
    result = runner.invoke(main, ["triton", "--bundle", str(bundle_dir), "--out", str(repo), "--backend", "openvino",
                                  "--max-batch", "8", "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert read_config(repo / "ts2net_text" / "config.pbtxt").max_batch_size == 8
    assert list(read_config(repo / "ts2net_video" / "config.pbtxt").dynamic_batching.preferred_batch_size) == [4, 8]
    result = runner.invoke(main, ["triton", "--check", str(repo)])
    assert result.exit_code == 0 and "valid Triton model repository" in result.output
    result = runner.invoke(main, ["triton", "--bundle", str(bundle_dir), "--out", str(tmp_path / "x"), "--backend",
                                  "tensorrt"])
    assert result.exit_code == 1 and "no TensorRT engines" in result.output and "Traceback" not in result.output


def test_served_metadata_is_checked_against_the_manifest(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    entry = manifest["graphs"]["video"]["fp32"]
    served = {"inputs": [{"name": "frames", "datatype": "FP32", "shape": [-1] + entry["inputs"][0]["shape"][1:]},
                         {"name": "frame_mask", "datatype": "INT32", "shape": [-1, entry["inputs"][1]["shape"][1]]}],
              "outputs": [{"name": "frame_embeds", "datatype": "FP32", "shape": [-1] + entry["outputs"][0]["shape"][1:]},
                          {"name": "extra", "datatype": "FP32", "shape": [-1, 1]}]}
    problems = metadata_problems(served, entry["inputs"], entry["outputs"])
    assert problems == [
        f"input 'frame_mask': served as INT32 [-1, {entry['inputs'][1]['shape'][1]}], the bundle has INT64 "
        f"[-1, {entry['inputs'][1]['shape'][1]}]",
        "output 'patch_indices': not served (the server has ['extra', 'frame_embeds'])",
        "output 'extra': served but not in the bundle"]
