"""The Triton server process: PyTriton binding the runtime's backends (runs in the Python 3.13 env).

Started by `runtime.triton.server.TritonServer` (never imported by the main environment): it
opens the bundle (every file's sha256 checked), creates one runtime backend per graph and
instance, and binds them to Triton as `ts2net_text` / `ts2net_video` with the manifest's tensor
names, dtypes and shapes, and Triton's dynamic batcher in front. So what Triton batches is what
`BundleEncoder` would have computed: the same backend code, the same checks on every feed.

Every endpoint (HTTP, gRPC, metrics) listens on 127.0.0.1 only. SIGTERM and SIGINT stop Triton
and remove PyTriton's workspace. The statistics endpoint is left open (read-only) so clients can
see the batch sizes Triton formed; model control, shared memory, trace and logging stay
restricted to PyTriton's own token.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np

LOOPBACK = "127.0.0.1"
log = logging.getLogger("ts2net.serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batching", required=True, help="JSON {graph: {max_batch, preferred, queue_delay_us}}")
    parser.add_argument("--ready-file", default=None, help="written (JSON facts) once both models are loaded")
    parser.add_argument("--log-verbose", type=int, default=0)
    return parser.parse_args(argv)


def make_infer(backend):
    """A PyTriton batch callable over one loaded runtime backend."""
    from pytriton.decorators import batch

    names = backend.input_names
    dtypes = {s["name"]: np.dtype(s["dtype"]) for s in backend.input_specs}
    # ONNX Runtime hands out int64 as C `long long` ('q'), which PyTriton's strict output check does
    # not take for the config's np.int64 ('l'): a view as the declared type (no copy) satisfies it.
    out_types = {s["name"]: np.dtype(s["dtype"]).type for s in backend.output_specs}

    @batch
    def infer(**inputs):
        feed = {name: np.ascontiguousarray(inputs[name], dtype=dtypes[name]) for name in names}
        outputs = backend.infer(feed)
        return {name: np.ascontiguousarray(outputs[name]).view(out_types[name]) for name in backend.output_names}

    return infer


def tensors(specs):
    from pytriton.model_config import Tensor

    return [Tensor(name=s["name"], dtype=np.dtype(s["dtype"]).type, shape=tuple(int(d) for d in s["shape"][1:]))
            for s in specs]


def _stop_on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from runtime.backends import create_backend
    from runtime.bundle import open_bundle
    from runtime.triton import MODEL_NAMES

    from runtime.backends import BackendUnavailable
    from runtime.bundle import BundleError

    try:
        bundle = open_bundle(args.bundle)
        backends = {graph: [create_backend(bundle, graph, args.backend, args.precision, threads=args.threads).load()
                            for _ in range(args.instances)] for graph in MODEL_NAMES}
    except (BundleError, BackendUnavailable, ValueError) as exc:
        # one readable line at the end of the log: the launcher shows it as the reason
        print(f"error: cannot serve {args.bundle} with {args.backend}: {exc}", file=sys.stderr, flush=True)
        return 2
    batching = json.loads(args.batching)
    config = TritonConfig(http_address=LOOPBACK, http_port=args.http_port, grpc_address=LOOPBACK,
                          grpc_port=args.grpc_port, metrics_address=LOOPBACK, metrics_port=args.metrics_port,
                          allow_cpu_metrics=False, allow_gpu_metrics=False, exit_timeout_secs=5,
                          log_verbose=args.log_verbose)
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
    signal.signal(signal.SIGTERM, _stop_on_signal)
    with Triton(config=config, security_config=security) as triton:
        for graph, name in MODEL_NAMES.items():
            first = backends[graph][0]
            limits = batching[graph]
            triton.bind(model_name=name, infer_func=[make_infer(b) for b in backends[graph]],
                        inputs=tensors(first.input_specs), outputs=tensors(first.output_specs),
                        config=ModelConfig(max_batch_size=int(limits["max_batch"]), batcher=DynamicBatcher(
                            max_queue_delay_microseconds=int(limits["queue_delay_us"]),
                            preferred_batch_size=[int(b) for b in limits["preferred"]])),
                        strict=True)
        triton.connect()
        facts = {"pid": os.getpid(), "bundle": str(bundle.path), "bundle_id": bundle.content_id,
                 "backend": args.backend, "precision": backends["text"][0].precision,
                 "http": f"http://{LOOPBACK}:{args.http_port}", "grpc": f"grpc://{LOOPBACK}:{args.grpc_port}",
                 "metrics": f"http://{LOOPBACK}:{args.metrics_port}/metrics", "batching": batching,
                 "instances": args.instances, "python": sys.version.split()[0]}
        if args.ready_file:
            tmp = Path(args.ready_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(facts, indent=1))
            tmp.replace(args.ready_file)
        log.info("serving %s (%s %s) at %s", bundle.path, args.backend, facts["precision"], facts["http"])
        triton.serve()
    for graph_backends in backends.values():
        for backend in graph_backends:
            backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
