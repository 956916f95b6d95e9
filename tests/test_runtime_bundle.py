"""runtime.bundle: manifest schema, checksums, invalid bundles, and the facts a bundle exposes.

The session fixture `bundle_dir` (tests/conftest.py) exports the fixed-seed tiny model once per test
session; tests that damage a bundle work on a copy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import Bundle, BundleError, open_bundle, schema_problems


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def test_open_exposes_the_manifest_facts(bundle_dir):
    bundle = open_bundle(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert isinstance(bundle, Bundle) and bundle.path == bundle_dir
    assert (bundle.max_frames, bundle.max_words, bundle.image_size, bundle.embed_dim, bundle.top_k) == (12, 32, 32, 64, 3)
    assert bundle.model["name"] == manifest["model"]["name"]
    assert bundle.frame_mask_mode == manifest["similarity"]["frame_mask_mode"]
    assert bundle.similarity_args == {"logit_scale": manifest["similarity"]["logit_scale"],
                                      "frame_mask_mode": manifest["similarity"]["frame_mask_mode"],
                                      "tokens_per_frame": 4, "softmax_factor": 4.0}
    assert bundle.graph_path("video", "fp16") == bundle_dir / "video.fp16.onnx"
    assert [t["name"] for t in bundle.inputs("video")] == ["frames", "frame_mask"]
    assert bundle.tokenizer() is bundle.tokenizer()  # loaded once
    ref = bundle.reference()
    assert ref["frames"].shape == (len(ref["input_ids"]), 12, 3, 32, 32)
    assert ref["captions"].dtype.kind == "U"  # strings load without pickle


def test_sha256_is_a_short_stable_id_that_follows_the_graphs(bundle_dir, bundle_copy):
    first, again = open_bundle(bundle_dir).content_id, open_bundle(bundle_copy).content_id
    assert first == again and len(first) == 16 and int(first, 16) >= 0
    edit_manifest(bundle_copy, lambda m: m["graphs"]["text"]["fp32"].update(sha256="0" * 64))
    assert open_bundle(bundle_copy, verify=False).content_id != first


def test_checksum_mismatch_names_the_file(bundle_copy):
    data = bytearray((bundle_copy / "video.fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "video.fp16.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"video\.fp16\.onnx does not match its checksum"):
        open_bundle(bundle_copy)
    # lazily: the other files are served, the altered one is refused when it is used
    bundle = open_bundle(bundle_copy, verify=False)
    assert bundle.graph_path("video", "fp32").is_file()
    with pytest.raises(BundleError, match=r"video\.fp16\.onnx"):
        bundle.graph_path("video", "fp16")


def test_missing_files_are_all_named_at_once(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    (bundle_copy / "reference.npz").unlink()
    with pytest.raises(BundleError) as err:
        open_bundle(bundle_copy)
    message = str(err.value)
    assert "2 bundle files failed" in message
    assert "tokenizer.json is listed in manifest.json but missing" in message
    assert "reference.npz is listed in manifest.json but missing" in message
    with pytest.raises(BundleError, match="tokenizer.json"):
        open_bundle(bundle_copy, verify=False).tokenizer()


def test_invalid_bundle_is_refused_unless_allowed(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(valid=False))
    with pytest.raises(BundleError, match=r"invalid.*validation\.md"):
        open_bundle(bundle_copy)
    assert open_bundle(bundle_copy, allow_invalid=True).valid is False


def test_invalid_bundle_message_tells_cli_users_what_to_run(bundle_copy):
    """No Python argument (allow_invalid=True) in a message that CLI users read."""
    from click.testing import CliRunner

    from cli.main import main

    edit_manifest(bundle_copy, lambda m: m.update(valid=False))
    with pytest.raises(BundleError) as info:
        open_bundle(bundle_copy)
    assert "allow_invalid" not in str(info.value) and "export it again with `ts2net export`" in str(info.value)
    result = CliRunner().invoke(main, ["parity", "--bundle", str(bundle_copy)])
    assert result.exit_code == 2 and "ts2net export" in result.output and "allow_invalid" not in result.output


def test_schema_problems_are_listed_together(bundle_copy):
    def damage(m):
        m["format_version"] = 99
        del m["graphs"]["video"]
        m["graphs"]["text"]["fp32"]["file"] = "../elsewhere.onnx"
        m["graphs"]["text"]["fp16"]["sha256"] = "xyz"
        m["graphs"]["text"]["fp16"]["inputs"][0]["dtype"] = "complex64"
        del m["similarity"]["logit_scale"]
        m["engines"] = {"text": {"file": "text.plan", "sha256": "a" * 64}}
    edit_manifest(bundle_copy, damage)
    with pytest.raises(BundleError) as err:
        open_bundle(bundle_copy)
    message = str(err.value)
    for expected in ("format_version: 99", "graphs.video: missing", "graphs.text.fp32.file", "graphs.text.fp16.sha256",
                     "graphs.text.fp16.inputs[0].dtype", "similarity.logit_scale", "engines.text: missing"):
        assert expected in message, expected


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="not a directory"):
        open_bundle(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        open_bundle(tmp_path)
    assert schema_problems({"format": "other"})[0].startswith("format: 'other'")


def test_engine_path_without_engines_says_how_to_build(bundle_dir):
    bundle = open_bundle(bundle_dir)
    assert not bundle.has_engine("video")
    with pytest.raises(BundleError, match="make engine"):
        bundle.engine_path("video")
    with pytest.raises(BundleError, match="no fp8 text graph"):
        bundle.graph_path("text", "fp8")


def test_reference_arrays_match_the_manifest(bundle_dir):
    bundle = open_bundle(bundle_dir)
    ref = bundle.reference()
    assert sorted(ref) == sorted(bundle.manifest["reference"]["arrays"])
    assert ref["text_embeds"].dtype == np.float32 and ref["patch_indices"].dtype == np.int64
