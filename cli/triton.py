"""`ts2net triton`, `ts2net serve`, `ts2net encode`, `ts2net serve-load` (thin wrappers over runtime.triton)."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
import numpy as np

from cli.errors import CommandError
from runtime.backends import BackendUnavailable
from runtime.bundle import BundleError


def _fail_cleanly(action):
    """Run `action`; known errors become one-line click errors instead of tracebacks."""
    from runtime.triton.environment import ServeEnvError
    from runtime.triton.repository import TritonRepositoryError
    from runtime.triton.server import ServerStartError

    try:
        return action()
    except (BundleError, TritonRepositoryError, ServeEnvError, ServerStartError, BackendUnavailable, ValueError,
            OSError) as exc:
        raise CommandError(str(exc)) from exc


@click.command("triton")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Bundle directory (from `ts2net export`).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Model repository to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True, help="Triton backend (tensorrt needs the bundle's engines).")
@click.option("--precision", default=None, help="Graph precision listed in the manifest (default fp32; tensorrt: "
              "the engines').")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size [default: engine profile max, else text 64 / video 16].")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances per model (instance_group count).")
@click.option("--force", is_flag=True, help="Replace an existing repository (only once the new one is valid).")
@click.option("--check", "check_dir", type=click.Path(), default=None,
              help="Validate an existing repository instead of writing one (lists every problem).")
def triton_command(bundle_dir, out, backend, precision, max_batch, instances, force, check_dir):
    """Write a Triton model repository (ts2net_text, ts2net_video) for tritonserver, or --check one."""
    from runtime.triton.validate import check_repository

    if check_dir:
        problems = _fail_cleanly(lambda: check_repository(check_dir, bundle=bundle_dir))
        if problems:
            click.echo(f"{check_dir}: {len(problems)} problem(s):", err=True)
            for problem in problems:
                click.echo(f"  - {problem}", err=True)
            sys.exit(1)
        click.echo(f"{check_dir}: valid Triton model repository (ts2net_text, ts2net_video)")
        return
    if not bundle_dir or not out:
        raise click.UsageError("pass --bundle and --out to write a repository, or --check REPO to validate one")
    from runtime.triton.repository import write_repository

    path = _fail_cleanly(lambda: write_repository(bundle_dir, out, backend=backend, precision=precision,
                                                  max_batch=max_batch, instances=instances, force=force))
    click.echo(f"wrote and validated {path} ({backend}); serve it with: tritonserver --model-repository={path} "
               f"(see {path}/README.md)")


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


@click.command("serve")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--port", type=click.IntRange(1, 65533), default=8000, show_default=True,
              help="HTTP port on 127.0.0.1; gRPC is PORT+1, metrics PORT+2.")
@click.option("--backend", default="ort-cpu", show_default=True, help="Runtime backend the models run on.")
@click.option("--precision", default=None, help="Graph precision (default fp32).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per model.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per backend instance.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch Triton forms [default: text 64, video 16, or the engine profiles].")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the dynamic batcher waits for more requests.")
def serve_command(bundle_dir, port, backend, precision, instances, threads, max_batch, queue_delay_us):
    """Serve the text and video encoders with Triton on this machine (PyTriton, dynamic batching)."""
    from runtime.triton.server import TritonServer

    server = _fail_cleanly(lambda: TritonServer(bundle_dir, backend=backend, precision=precision, http_port=port,
                                                instances=instances, threads=threads, max_batch=max_batch,
                                                queue_delay_us=queue_delay_us))
    click.echo(f"starting Triton for {bundle_dir} ({backend}) ...", err=True)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM, even while starting, stops the server like Ctrl-C
    try:
        _fail_cleanly(server.start)
        click.echo(f"serving ts2net_text and ts2net_video at {server.url} (gRPC {server.grpc_url}, metrics "
                   f"{server.metrics_url}); log: {server.log_path}; Ctrl-C stops")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
    if code not in (0, None, -signal.SIGTERM):
        raise CommandError(f"the server exited with code {code}; log: {server.log_path}\n{server.log_tail()}")


@click.command("encode")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--server", default=None, metavar="URL", help="Triton URL (http://HOST:PORT or grpc://HOST:PORT); "
              "without it the local --backend encodes.")
@click.option("--backend", default="ort-cpu", show_default=True, help="Local backend when no --server is given.")
@click.option("--precision", default=None, help="Local graph precision (default fp32).")
@click.option("--text", "texts", multiple=True, help="A caption to encode (repeatable).")
@click.option("--video", "videos", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A video file to encode (repeatable).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help=".npz file to write.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
def encode_command(bundle_dir, server, backend, precision, texts, videos, out, batch_size):
    """Encode captions and/or videos to an .npz (text_embeds, frame_embeds, frame_mask, patch_indices)."""
    from runtime.encoder import BundleEncoder
    from runtime.files import atomic_write_bytes, npz_bytes

    if not texts and not videos:
        raise click.UsageError("nothing to encode: pass --text and/or --video")

    def run():
        if server:
            from runtime.triton.client import ServerEncoder

            encoder = ServerEncoder(bundle_dir, server, batch_size=batch_size)
        else:
            encoder = BundleEncoder(bundle_dir, backend=backend, precision=precision, batch_size=batch_size)
        arrays = {}
        with encoder:
            if texts:
                arrays["texts"] = np.array(list(texts))
                arrays["text_embeds"] = encoder.encode_texts(list(texts))
            if videos:
                result = encoder.encode_video_files(list(videos), progress=False)
                arrays.update(videos=np.array(result.paths), frame_embeds=result.frame_embeds,
                              frame_mask=result.frame_mask)
                if result.patch_indices is not None:
                    arrays["patch_indices"] = result.patch_indices
        atomic_write_bytes(out, npz_bytes(arrays))
        return arrays

    from runtime.video import VideoDecodeError

    try:
        arrays = _fail_cleanly(run)
    except VideoDecodeError as exc:
        raise CommandError(str(exc)) from exc
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items() if k not in ("texts", "videos"))
    click.echo(f"wrote {out}: {shapes}" + (f" (via {server})" if server else f" ({backend})"))


@click.command("serve-load")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default="reports/serve-load", show_default=True)
@click.option("--clients", type=click.IntRange(2, 64), default=8, show_default=True)
@click.option("--texts", type=click.IntRange(min=1, max=10000), default=96, show_default=True,
              help="Single-caption text requests per phase.")
@click.option("--videos", type=click.IntRange(min=1, max=2000), default=24, show_default=True,
              help="Single-video requests per phase.")
@click.option("--backend", default="ort-cpu", show_default=True)
@click.option("--precision", default=None)
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(1, 3600), default=300, show_default=True,
              help="Wall-clock limit per phase (s); unanswered requests then count as lost.")
def serve_load_command(bundle_dir, out, clients, texts, videos, backend, precision, time_limit_s):
    """Bounded load test of `ts2net serve` on 127.0.0.1: N clients vs 1, equality, batching achieved."""
    from runtime.triton.load import run_load_test

    report = _fail_cleanly(lambda: run_load_test(bundle_dir, out, clients=clients, texts=texts, videos=videos,
                                                 backend=backend, precision=precision, time_limit_s=time_limit_s))
    single, concurrent = report["single"], report["concurrent"]
    click.echo(json.dumps({"passed": report["passed"], "single_rps": single["requests_per_s"],
                           "concurrent_rps": concurrent["requests_per_s"], "ratio": report["throughput_ratio"],
                           "mean_batch": {m: s["mean_batch"] for m, s in concurrent["server"].items()}}))
    click.echo(f"report: {Path(out) / 'serve-load.md'}")
    if not report["passed"]:
        sys.exit(1)
