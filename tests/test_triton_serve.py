"""A real Triton (PyTriton, Python 3.13 serve environment) serving the tiny bundle on 127.0.0.1.

Start, health, text and video inference over HTTP and gRPC compared with the local runtime,
`ts2net encode --server` and `ts2net index --server`, a bundle of another shape refused, stop
(the process and its port gone). Skipped only when no Python 3.13 is installed; otherwise the
serve environment is created if missing (`make test` creates it first, cached).
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from runtime.backends import create_backend
from runtime.bundle import BundleError, open_bundle
from cli.main import main
from runtime.encoder import BundleEncoder
from runtime.parity import THRESHOLDS
from runtime.triton.client import ServerEncoder
from runtime.triton.environment import ensure_serve_env, find_python313
from runtime.triton.load import Request, compare
from runtime.triton.server import TritonServer

pytestmark = pytest.mark.skipif(find_python313() is None, reason="no Python 3.13 installed: PyTriton's tritonserver "
                                "needs it (pyenv install 3.13), so the real-server tests cannot run")


@pytest.fixture(scope="module")
def server(bundle_dir):
    ensure_serve_env()
    with TritonServer(bundle_dir, queue_delay_us=1000) as running:
        yield running


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _assert_within_fp32_gate(graph: str, feed, expected, received) -> None:
    problems = compare(Request("row", graph, feed, expected), received, "fp32")
    assert problems == []


def test_server_answers_like_the_local_runtime(server, bundle_dir):
    bundle = open_bundle(bundle_dir)
    assert server.models_ready() and server.facts["backend"] == "ort-cpu"
    assert all(_port_open(p) for p in (server.http_port, server.grpc_port, server.metrics_port))
    reference = bundle.reference()
    captions = [str(c) for c in reference["captions"]]
    local = BundleEncoder(bundle)
    for url in (server.url, server.grpc_url):
        with ServerEncoder(bundle, url, batch_size=4) as remote:
            assert remote.backend("text").max_batch == 64 and remote.backend("video").max_batch == 16
            texts = remote.encode_texts(captions)
            embeds, indices = remote.encode_frames(reference["frames"], reference["frame_mask"])
        want_texts = local.encode_texts(captions)
        want_embeds, want_indices = local.encode_frames(reference["frames"], reference["frame_mask"])
        _assert_within_fp32_gate("text", {}, {"text_embeds": want_texts}, {"text_embeds": texts})
        _assert_within_fp32_gate("video", {}, {"frame_embeds": want_embeds, "patch_indices": want_indices},
                                 {"frame_embeds": embeds, "patch_indices": indices})
        np.testing.assert_array_equal(indices, want_indices)
        # and against PyTorch's reference, with the same gate the export passed
        cos = np.sum(texts * reference["text_embeds"], 1) / (np.linalg.norm(texts, axis=1)
                                                             * np.linalg.norm(reference["text_embeds"], axis=1))
        assert cos.min() >= THRESHOLDS["fp32"]["cosine_min"]
    local.close()


def test_encode_and_index_through_the_server(server, bundle_dir, colour_clips, tmp_path):
    videos = Path(shutil.copytree(colour_clips, tmp_path / "videos"))
    runner = CliRunner()
    out = tmp_path / "remote.npz"
    result = runner.invoke(main, ["encode", "--bundle", str(bundle_dir), "--server", server.url, "--text", "a dog",
                                  "--text", "a red car", "--video", str(videos / "video3.mp4"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    local_out = tmp_path / "local.npz"
    result = runner.invoke(main, ["encode", "--bundle", str(bundle_dir), "--text", "a dog", "--text", "a red car",
                                  "--video", str(videos / "video3.mp4"), "--out", str(local_out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as remote, np.load(local_out) as local:
        assert list(remote["texts"]) == ["a dog", "a red car"]
        np.testing.assert_allclose(remote["text_embeds"], local["text_embeds"], atol=THRESHOLDS["fp32"]["max_abs_err"])
        np.testing.assert_allclose(remote["frame_embeds"], local["frame_embeds"], atol=THRESHOLDS["fp32"]["max_abs_err"])
        np.testing.assert_array_equal(remote["patch_indices"], local["patch_indices"])

    result = runner.invoke(main, ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out",
                                  str(tmp_path / "index"), "--server", server.grpc_url, "--no-cache", "--dtype",
                                  "float32", "--no-progress"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["backend"] == "triton" and meta["server"] == server.grpc_url and meta["n_videos"] == 6
    result = runner.invoke(main, ["index", "--bundle", str(bundle_dir), "--videos", str(videos), "--out",
                                  str(tmp_path / "index-local"), "--no-cache", "--dtype", "float32", "--no-progress"])
    assert result.exit_code == 0, result.output
    served = np.load(next((tmp_path / "index").glob("frame_embeds.*.npy")))
    local = np.load(next((tmp_path / "index-local").glob("frame_embeds.*.npy")))
    np.testing.assert_allclose(served, local, atol=THRESHOLDS["fp32"]["max_abs_err"])


def test_a_bundle_of_another_shape_is_refused(server, bundle_dir, tmp_path):
    other = Path(shutil.copytree(bundle_dir, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["graphs"]["video"]["fp32"]["inputs"][0]["shape"][1] = 4   # as a bundle exported with 4 frames
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"frames': served as FP32 \[-1, 12, .*the bundle has FP32 \[-1, 4,"):
        ServerEncoder(other, server.url).backend("video")
    result = CliRunner().invoke(main, ["encode", "--bundle", str(other), "--server", "http://127.0.0.1:1",
                                       "--text", "x", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "cannot be reached" in result.output and "Traceback" not in result.output


def test_stop_leaves_nothing_running(bundle_dir):
    ensure_serve_env()
    server = TritonServer(bundle_dir).start()
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    process = server._process  # noqa: SLF001 - the test checks the process itself
    code = server.stop()
    assert process.poll() is not None and code is not None
    assert not any(_port_open(p) for p in ports)
    assert create_backend(bundle_dir, "text").load() is not None  # the bundle is still fine to use locally


def test_serve_command_runs_until_terminated(bundle_dir):
    """`ts2net serve` as a user starts it: ready on --port, answers, and SIGTERM stops everything."""
    import os
    import signal
    import subprocess
    import sys
    from runtime.triton.server import free_port

    ensure_serve_env()
    port = next(p for p in (free_port() for _ in range(20)) if p < 65000 and not any(
        _port_open(q) for q in (p, p + 1, p + 2)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--bundle", str(bundle_dir), "--port",
                                str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the command prints "serving ..." once both models are ready (its own start timeout bounds the wait)
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        with ServerEncoder(bundle_dir, f"http://127.0.0.1:{port}") as remote:
            assert remote.encode_texts(["a dog"]).shape == (1, open_bundle(bundle_dir).embed_dim)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
        output = "".join(lines) + output
    finally:
        if process.poll() is None:  # a failed assertion: still stop it the way that also stops Triton
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    assert process.returncode == 0, output
    assert f"serving ts2net_text and ts2net_video at http://127.0.0.1:{port}" in output
    assert not any(_port_open(p) for p in (port, port + 1, port + 2))


def test_serve_with_a_backend_that_cannot_run_fails_in_one_message(bundle_dir):
    ensure_serve_env()
    result = CliRunner().invoke(main, ["serve", "--bundle", str(bundle_dir), "--backend", "tensorrt"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "exited with code 2 before it was ready" in result.output
    assert f"error: cannot serve {bundle_dir} with tensorrt: tensorrt cannot run" in result.output
