"""`ts2net export`: graphs, FP16 islands, checker, reference, validation and manifest."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

import export.exporter as bundle_mod
from export import manifest as mf
from export.exporter import ExportValidationError, export_bundle
from export.checker import GraphCheckError, assert_trt_compatible, check_graph
from factories import TINY12, official_state_dict, random_model
from cli.main import main as cli
from ts2net import TS2NetConfig


def test_bundle_files_and_checksums(tiny_export):
    bundle, manifest = tiny_export.bundle, tiny_export.manifest
    names = {p.name for p in bundle.iterdir()}
    assert {"manifest.json", "text.onnx", "video.onnx", "text.fp16.onnx", "video.fp16.onnx", "tokenizer.json",
            "reference.npz", "validation.md"} <= names
    on_disk = json.loads((bundle / "manifest.json").read_text())
    assert on_disk["valid"] is True and on_disk["format"] == "ts2net-bundle" and on_disk["format_version"] == 1
    entries = [on_disk["tokenizer"], on_disk["reference"]]
    entries += [g[p] for g in on_disk["graphs"].values() for p in ("fp32", "fp16")]
    for entry in entries:
        assert mf.sha256_file(bundle / entry["file"]) == entry["sha256"], entry["file"]
    assert on_disk["similarity"]["frame_mask_mode"] == "fixed"
    assert on_disk["tokenizer"]["sot_id"] == 49406 and on_disk["tokenizer"]["pad_id"] == 0
    assert {"torch", "onnx", "onnxruntime"} <= set(on_disk["tools"])


def test_graph_io_contract(tiny_export):
    cfg = TS2NetConfig.preset("tiny")
    for name, expected in {
        "text": ({"input_ids": (TensorProto.INT64, ["batch", cfg.max_words])},
                 {"text_embeds": (TensorProto.FLOAT, ["batch", cfg.embed_dim])}),
        "video": ({"frames": (TensorProto.FLOAT, ["batch", 12, 3, 32, 32]), "frame_mask": (TensorProto.INT64, ["batch", 12])},
                  {"frame_embeds": (TensorProto.FLOAT, ["batch", 12, cfg.embed_dim]),
                   "patch_indices": (TensorProto.INT64, ["batch", 12, 3])}),
    }.items():
        for suffix in ("", ".fp16"):
            graph = onnx.load(tiny_export.bundle / f"{name}{suffix}.onnx").graph
            for values, wanted in ((graph.input, expected[0]), (graph.output, expected[1])):
                got = {v.name: (v.type.tensor_type.elem_type,
                                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}
                assert got == wanted, (name, suffix)


def test_graphs_are_trt_clean_with_one_sorted_topk(tiny_export):
    for file in ("text.onnx", "video.onnx", "text.fp16.onnx", "video.fp16.onnx"):
        model = onnx.load(tiny_export.bundle / file)
        assert check_graph(model) == [], file
        ops = [n.op_type for n in model.graph.node]
        assert not any(op.startswith("Random") for op in ops)
    video_ops = [n for n in onnx.load(tiny_export.bundle / "video.onnx").graph.node if n.op_type == "TopK"]
    assert len(video_ops) == 1


def test_fp16_graph_keeps_the_selector_in_fp32(tiny_export):
    model = onnx.shape_inference.infer_shapes(onnx.load(tiny_export.bundle / "video.fp16.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    selector = [n for n in model.graph.node   # the selector's own nodes, not the boundary casts after it
                if "/visual_token_selector/" in n.name and not n.name.endswith("__cast_fp16")]
    assert selector
    for node in selector:
        for out in node.output:
            assert types.get(out) != TensorProto.FLOAT16, node.name
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and "/visual/" in n.name]
    assert matmuls and all(types[n.output[0]] == TensorProto.FLOAT16 for n in matmuls)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types.get(node.output[0]) == TensorProto.FLOAT, node.name


def test_validation_figures_meet_both_rows(tiny_export):
    fp32, fp16 = tiny_export.parity["fp32"], tiny_export.parity["fp16"]
    assert fp32.passed and fp16.passed, (fp32.failures, fp16.failures)
    assert fp32.figures["patch_indices"]["agreement"] == 1.0
    assert fp32.figures["text_embeds"]["max_abs_err"] <= 1e-4
    assert tiny_export.manifest["parity"]["fp16"]["figures"]["frame_embeds"]["cosine_mean"] >= 0.999


def test_reference_holds_inputs_and_torch_outputs(tiny_export):
    ref = np.load(tiny_export.bundle / "reference.npz", allow_pickle=False)
    assert sorted(ref["frame_mask"].sum(1).tolist()) == sorted([12, 11, 5, 1, 12, 11])
    long_caption = ref["input_ids"][-1]
    assert long_caption[-1] == 49407 and (long_caption != 0).all()      # truncated: SOT ... EOT, no padding
    assert (ref["frames"][ref["frame_mask"] == 0] == 0).all()
    for key in ("text_embeds", "frame_embeds", "patch_indices", "similarity", "captions"):
        assert key in ref.files


def test_official_checkpoint_through_cli(tmp_path):
    cfg = TS2NetConfig(**TINY12, frame_mask_mode="official")
    ckpt = tmp_path / "pytorch_model.bin.2"
    torch.save(official_state_dict(random_model(cfg)), ckpt)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"),
                                      "--max-frames", "8", "--no-int8"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["valid"] and manifest["similarity"]["frame_mask_mode"] == "official"
    assert manifest["model"]["max_frames"] == 8 and manifest["model"]["vision_layers"] == 12
    assert manifest["source_checkpoint"]["name"] == "pytorch_model.bin.2"
    assert manifest["source_checkpoint"]["sha256"] == mf.sha256_file(ckpt)
    assert manifest["graphs"]["video"]["fp32"]["inputs"][0]["shape"] == ["batch", 8, 3, 32, 32]


def corrupt_text_outputs(monkeypatch) -> None:
    """ONNX Runtime's text embeddings shifted by 1e-2 during export validation: FP32 parity fails."""
    real = bundle_mod.run_onnx

    def corrupted(path, inputs):
        out = real(path, inputs)
        if "text_embeds" in out:
            out["text_embeds"] = out["text_embeds"] + 1e-2
        return out

    monkeypatch.setattr(bundle_mod, "run_onnx", corrupted)


def test_failed_validation_marks_bundle_invalid_and_exits_nonzero(tmp_path, monkeypatch):
    corrupt_text_outputs(monkeypatch)
    with pytest.raises(ExportValidationError, match="text_embeds: max abs err"):
        export_bundle(tmp_path / "bad", progress=False)
    assert json.loads((tmp_path / "bad" / "manifest.json").read_text())["valid"] is False
    result = CliRunner().invoke(cli, ["export", "--out", str(tmp_path / "bad2")])
    assert result.exit_code != 0 and "bundle marked invalid" in result.output


# ----------------------------------------------------------------------------- checker on bad graphs
def _graph(nodes, opset=17, inputs=None, outputs=None, initializers=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _k():
    return helper.make_tensor("k", TensorProto.INT64, [1], [3])


def test_checker_accepts_a_clean_topk():
    model = _graph([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk", sorted=1)], initializers=[_k()])
    assert check_graph(model) == []


def test_checker_rejects_bad_graphs_naming_nodes():
    unsorted = _graph([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="sel", sorted=0)], initializers=[_k()])
    assert any("node sel (TopK): sorted=0" in p for p in check_graph(unsorted))
    dynamic_k = _graph([helper.make_node("TopK", ["x", "kk"], ["y", "i"], name="sel")],
                       inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                               helper.make_tensor_value_info("kk", TensorProto.INT64, [1])])
    assert any("K is not a constant" in p for p in check_graph(dynamic_k))
    random = _graph([helper.make_node("RandomNormal", [], ["y"], name="noise", shape=[1, 3])])
    assert any("node noise (RandomNormal): random op" in p for p in check_graph(random))
    old = _graph([helper.make_node("Identity", ["x"], ["y"], name="id")], opset=16)
    assert any("opset 16" in p for p in check_graph(old))
    double = _graph([helper.make_node("Cast", ["x"], ["y"], name="up", to=TensorProto.DOUBLE)],
                    outputs=[helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 8])])
    problems = check_graph(double)
    assert any("casts to float64" in p for p in problems) and any("output y: float64" in p for p in problems)
    undeclared = _graph([helper.make_node("Identity", ["x"], ["y"], name="id")],
                        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "words"])])
    assert any("axis 1 is dynamic ('words')" in p for p in check_graph(undeclared))
    unsupported = _graph([helper.make_node("Col2Im", ["x", "x", "x"], ["y"], name="c2i")], opset=18)
    assert any("node c2i (Col2Im): op type not supported" in p for p in check_graph(unsupported))
    with pytest.raises(GraphCheckError, match="2 TensorRT compatibility problem"):
        assert_trt_compatible(_graph([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="a", sorted=0),
                                      ], opset=16, initializers=[_k()]))


@pytest.mark.parametrize("op, n_inputs", [("BitShift", 2), ("Compress", 2), ("ConcatFromSequence", 1),
                                          ("DynamicQuantizeLinear", 1), ("STFT", 2), ("Unique", 1)])
def test_checker_rejects_ops_the_tensorrt_parser_does_not_import(op, n_inputs):
    """The "N" rows of the onnx-tensorrt matrix (TensorRT 10.1) that an older list accepted."""
    model = _graph([helper.make_node(op, ["x"] * n_inputs, ["y"], name="n")], opset=20)
    assert any(f"node n ({op}): op type not supported by the TensorRT ONNX parser" in p for p in check_graph(model))


def test_checker_accepts_castlike_and_follows_a_named_parser_matrix():
    from export.checker import TRT_PARSER_MATRIX, TRT_SUPPORTED_OPS

    model = _graph([helper.make_node("CastLike", ["x", "x"], ["y"], name="cl")])
    assert check_graph(model) == []
    assert "TensorRT 10.1" in TRT_PARSER_MATRIX and {"CastLike", "Scan", "LayerNormalization"} <= TRT_SUPPORTED_OPS


@pytest.mark.parametrize("k, ok", [(3, True), (3839, True), (3840, False), (5000, False)])
def test_checker_requires_topk_k_below_3840(k, ok):
    init = helper.make_tensor("k", TensorProto.INT64, [1], [k])
    model = _graph([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="sel", sorted=1)], initializers=[init])
    problems = check_graph(model)
    assert (problems == []) if ok else any(f"node sel (TopK): K = {k}; the TensorRT parser needs K < 3840" in p
                                           for p in problems)
    as_node = _graph([helper.make_node("Constant", [], ["k"], name="kc", value=init),
                      helper.make_node("TopK", ["x", "k"], ["y", "i"], name="sel", sorted=1)])
    assert (check_graph(as_node) == []) == ok


def test_large_graphs_use_external_data(tmp_path, monkeypatch, tiny_export):
    import onnxruntime as ort

    import export.onnx_graphs as graphs

    model = onnx.load(tiny_export.bundle / "text.onnx")
    monkeypatch.setattr(graphs, "TWO_GB", 1024 ** 2)            # pretend the 2 GB limit is 1 MB
    files = graphs.save_graph(model, tmp_path / "text.onnx")
    assert [f.name for f in files] == ["text.onnx", "text.onnx.data"]
    assert (tmp_path / "text.onnx").stat().st_size < 1024 ** 2 < (tmp_path / "text.onnx.data").stat().st_size
    ids = np.load(tiny_export.bundle / "reference.npz")["input_ids"]
    out = ort.InferenceSession(str(tmp_path / "text.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})
    np.testing.assert_allclose(out[0], np.load(tiny_export.bundle / "reference.npz")["text_embeds"], atol=1e-4)


def test_default_model_is_the_shipped_demo_unless_overridden(monkeypatch, tmp_path):
    from export.exporter import DEFAULT_MODEL_DIR, default_model

    monkeypatch.delenv("TS2NET_DEFAULT_MODEL")
    model, source, tokenizer = default_model()
    if (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        assert source["name"].startswith("embedded demo model") and tokenizer == DEFAULT_MODEL_DIR / "tokenizer.json"
        assert model.cfg.name == "demo"
    monkeypatch.setenv("TS2NET_DEFAULT_MODEL", "builtin-tiny")
    assert default_model()[0].cfg.name == "tiny-random-seed0"
    monkeypatch.setenv("TS2NET_DEFAULT_MODEL", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TS2NET_DEFAULT_MODEL"):
        default_model()


def test_meanp_baseline_exports_and_validates(tmp_path):
    """The CLIP4Clip meanP baseline rides the same I/O contract (repeated video embedding per frame)."""
    cfg = TS2NetConfig(**{**TINY12, "vision_layers": 2}, sim_header="meanP", token_selection=False,
                       token_shift=False)
    ckpt = tmp_path / "pytorch_model.bin.0"
    torch.save(official_state_dict(random_model(cfg)), ckpt)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--no-int8"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["valid"] and manifest["model"]["sim_header"] == "meanP"
    ref = np.load(tmp_path / "b" / "reference.npz", allow_pickle=False)
    frames = ref["frame_embeds"]
    assert np.allclose(frames, frames[:, :1], atol=1e-6)   # one video embedding, repeated per frame


def _nan_checkpoint(tmp_path):
    import ts2net
    from factories import tiny_config

    model = random_model(tiny_config())
    with torch.no_grad():
        model.clip.ln_final.bias[0] = float("nan")
    return ts2net.save_model(model, tmp_path / "nan-ckpt")


def test_a_nan_weight_fails_export_naming_the_tensor(tmp_path):
    ckpt = _nan_checkpoint(tmp_path)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "non-finite weights (NaN/inf) in clip.ln_final.bias (1 of" in result.output
    assert "Traceback" not in result.output and "PASS" not in result.output
    assert not (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN figures are the point
def test_non_finite_outputs_fail_parity_naming_the_output():
    """NaN compares false with every limit: it must be a failure of its own, not a pass."""
    from runtime.parity import compare_outputs

    rng = np.random.default_rng(0)
    ref = {"text_embeds": rng.normal(size=(3, 8)).astype(np.float32),
           "frame_embeds": rng.normal(size=(3, 4, 8)).astype(np.float32), "frame_mask": np.ones((3, 4), np.int64)}
    args = dict(logit_scale=100.0, frame_mask_mode="fixed", tokens_per_frame=4)
    assert compare_outputs(ref, dict(ref), "fp32", **args).passed
    produced = {**ref, "text_embeds": ref["text_embeds"].copy()}
    produced["text_embeds"][1, 2] = np.nan
    for precision in ("fp32", "fp16"):
        result = compare_outputs(ref, produced, precision, **args)
        assert not result.passed
        assert "produced text_embeds: 1 non-finite values (NaN/inf), first at index (1, 2)" in result.failures
    bad_ref = {**ref, "frame_embeds": np.full_like(ref["frame_embeds"], np.inf)}
    result = compare_outputs(bad_ref, bad_ref, "fp16", **args)
    assert any(f.startswith("reference frame_embeds: 96 non-finite") for f in result.failures)


# ---------------------------------------------------------------- re-export safety (item 13)

def _fingerprint(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture()
def existing_bundle(tiny_export, tmp_path):
    import shutil

    out = tmp_path / "existing_bundle"
    shutil.copytree(tiny_export.bundle, out)
    return out


def test_a_failed_reexport_leaves_the_existing_bundle_intact(existing_bundle, monkeypatch):
    from runtime.bundle import open_bundle

    before = _fingerprint(existing_bundle)
    corrupt_text_outputs(monkeypatch)
    result = CliRunner().invoke(cli, ["export", "--out", str(existing_bundle), "--max-frames", "4"])
    assert result.exit_code == 1 and "the previous bundle at" in result.output and "is unchanged" in result.output
    assert _fingerprint(existing_bundle) == before
    assert open_bundle(existing_bundle).valid
    rejected = existing_bundle.with_name("existing_bundle.rejected")
    assert json.loads((rejected / "manifest.json").read_text())["valid"] is False
    assert not [p.name for p in existing_bundle.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_reexport_leaves_the_existing_bundle_intact(existing_bundle, monkeypatch, failure):
    before = _fingerprint(existing_bundle)
    real = bundle_mod.export_graph
    calls = []

    def dies_on_the_video_graph(model, spec, opset):
        calls.append(spec)
        if len(calls) == 2:
            raise failure("interrupted")
        return real(model, spec, opset)

    monkeypatch.setattr(bundle_mod, "export_graph", dies_on_the_video_graph)
    with pytest.raises(failure):
        export_bundle(existing_bundle, progress=False, max_frames=4)
    assert _fingerprint(existing_bundle) == before
    assert not [p.name for p in existing_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_successful_reexport_replaces_the_bundle_whole(existing_bundle):
    result = export_bundle(existing_bundle, progress=False, max_frames=4)
    assert result.bundle == existing_bundle
    manifest = json.loads((existing_bundle / "manifest.json").read_text())
    assert manifest["valid"] and manifest["model"]["max_frames"] == 4
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert existing_bundle.stat().st_mode & 0o777 == 0o777 & ~umask   # not mkdtemp's 0700
    assert not [p.name for p in existing_bundle.parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- ordinary mistakes (item 16, export)

def test_export_out_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path):
    some_file = tmp_path / "some_file"
    some_file.write_text("keep me")
    result = CliRunner().invoke(cli, ["export", "--out", str(some_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (f"Error: --out {some_file} exists and is a file; a bundle is a "
                                                     "directory: pick another path (or remove the file)")
    assert some_file.read_text() == "keep me"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"jpeg")
    result = CliRunner().invoke(cli, ["export", "--out", str(folder)])
    assert result.exit_code == 1 and "non-empty directory without manifest.json (not a bundle)" in result.output
    assert (folder / "holiday.jpg").read_bytes() == b"jpeg"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_export_max_frames_below_one_is_a_usage_error(tmp_path, value):
    result = CliRunner().invoke(cli, ["export", "--out", str(tmp_path / "b"), "--max-frames", value])
    assert result.exit_code == 2 and "Invalid value for '--max-frames'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match=f"max_frames={value} must be >= 1"):
        export_bundle(tmp_path / "b", progress=False, max_frames=int(value))
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


def test_export_supports_one_frame_per_video(tmp_path):
    result = export_bundle(tmp_path / "one", progress=False, max_frames=1)
    assert result.manifest["valid"] and result.manifest["model"]["max_frames"] == 1
    assert np.load(tmp_path / "one" / "reference.npz")["frame_mask"].tolist() == [[1]] * 6


def test_export_errors_start_on_their_own_line(tmp_path):
    """The progress bar is closed before the error, so "Error:" never lands on the bar's line."""
    ckpt = _nan_checkpoint(tmp_path)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.replace("\r", "\n").splitlines() if "Error:" in line]
    assert error_lines and all(line.startswith("Error:") for line in error_lines)


def test_cannot_infer_model_size_names_the_checkpoint(tmp_path):
    import ts2net

    cfg = TS2NetConfig(**TINY12, frame_mask_mode="official")
    state = official_state_dict(random_model(cfg))
    del state["clip.visual.conv1.weight"]
    ckpt = tmp_path / "pytorch_model.bin.3"
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=rf"^{ckpt}: cannot infer model size: key 'clip.visual.conv1.weight'"):
        ts2net.load_model(ckpt)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and f"Error: {ckpt}: cannot infer model size" in result.output
