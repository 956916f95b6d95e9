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


def test_failed_validation_marks_bundle_invalid_and_exits_nonzero(tmp_path, monkeypatch):
    real = bundle_mod.run_onnx

    def corrupted(path, inputs):
        out = real(path, inputs)
        if "text_embeds" in out:
            out["text_embeds"] = out["text_embeds"] + 1e-2
        return out

    monkeypatch.setattr(bundle_mod, "run_onnx", corrupted)
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
