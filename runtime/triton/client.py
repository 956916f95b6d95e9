"""Encoding through a Triton server (`--server URL`): a runtime Backend whose graph runs remotely.

`ServerBackend` has the interface of the local backends (`runtime.backends.Backend`): the same
feed checks against the manifest before anything is sent, the same output dict. So
`ServerEncoder` is `BundleEncoder` with the graphs behind a URL: tokenizing and video decoding
stay here with the bundle's tokenizer and preprocessing, batches are split to the model's
`max_batch_size`, and results equal local encoding within the precision's gate.

On first use the backend checks the served model against the bundle: names, datatypes and
shapes (from the server's model metadata) must be the manifest's, so a server running another
model shape is refused with every difference listed, instead of returning wrong-sized arrays.

URLs: `http://HOST:PORT` (the default scheme) or `grpc://HOST:PORT`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import urlparse

import numpy as np

from ..backends import Backend, BackendUnavailable
from ..bundle import Bundle, BundleError, open_bundle
from ..encoder import BundleEncoder
from . import MODEL_NAMES

WIRE_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}


def parse_server_url(url: str) -> tuple[str, str]:
    """("http" | "grpc", "host:port") of a server URL; a bare host:port is HTTP."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "grpc") or not parsed.hostname or not parsed.port:
        raise ValueError(f"--server {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    return parsed.scheme, f"{parsed.hostname}:{parsed.port}"


def connect(url: str, timeout_s: float = 60.0):
    """(protocol, tritonclient module, client) for a server URL."""
    protocol, address = parse_server_url(url)
    try:
        if protocol == "http":
            import tritonclient.http as module

            client = module.InferenceServerClient(address, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            client = module.InferenceServerClient(address)
    except ImportError as exc:
        raise BackendUnavailable(f"encoding through a server needs tritonclient ({exc}): "
                                 "pip install 'tritonclient[grpc,http]'") from exc
    return protocol, module, client


def _metadata_dict(protocol: str, metadata: Any) -> dict[str, Any]:
    if protocol == "grpc":
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(metadata, preserving_proto_field_name=True)
    return dict(metadata)


def metadata_problems(metadata: Mapping[str, Any], input_specs, output_specs) -> list[str]:
    """Differences between a served model's metadata (batch as -1) and the manifest's tensors."""
    problems = []
    for kind, specs, served in (("input", input_specs, metadata.get("inputs", [])),
                                ("output", output_specs, metadata.get("outputs", []))):
        by_name = {t["name"]: t for t in served}
        for spec in specs:
            tensor = by_name.pop(spec["name"], None)
            if tensor is None:
                problems.append(f"{kind} {spec['name']!r}: not served (the server has {sorted(t['name'] for t in served)})")
                continue
            want_shape = [-1 if isinstance(d, str) else int(d) for d in spec["shape"]]
            shape = [int(d) for d in tensor.get("shape", [])]
            if tensor.get("datatype") != WIRE_DTYPES.get(spec["dtype"]) or shape != want_shape:
                problems.append(f"{kind} {spec['name']!r}: served as {tensor.get('datatype')} {shape}, the bundle has "
                                f"{WIRE_DTYPES.get(spec['dtype'])} {want_shape}")
        problems += [f"{kind} {name!r}: served but not in the bundle" for name in by_name]
    return problems


class ServerBackend(Backend):
    """One graph of a bundle, run by a Triton server (`ts2net serve` or a `ts2net triton` repository)."""

    kind = "triton"

    def __init__(self, bundle: Bundle, graph: str, url: str, timeout_s: float = 60.0):
        if graph not in MODEL_NAMES:
            raise ValueError(f"graph={graph!r}: expected one of {list(MODEL_NAMES)}")
        super().__init__(bundle, graph, "fp32")  # every precision has the FP32 graph's I/O contract
        self.url = url
        self.model_name = MODEL_NAMES[graph]
        self.timeout_s = timeout_s
        parse_server_url(url)
        self._client = None
        self._module = None
        self._protocol = None
        self._max_batch: int | None = None
        self.served_precision: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind} {self.graph} at {self.url}"

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def _load_impl(self) -> None:
        protocol, module, client = connect(self.url, self.timeout_s)
        try:
            ready = client.is_server_ready() and client.is_model_ready(self.model_name)
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, ... : one clear message
            raise BackendUnavailable(f"Triton at {self.url} cannot be reached ({type(exc).__name__}: {exc}); start it "
                                     "with `ts2net serve --bundle BUNDLE` or check the URL") from exc
        if not ready:
            raise BackendUnavailable(f"Triton at {self.url} is up but model {self.model_name!r} is not ready")
        metadata = _metadata_dict(protocol, client.get_model_metadata(self.model_name))
        problems = metadata_problems(metadata, self.input_specs, self.output_specs)
        if problems:
            raise BundleError(f"{self.model_name} at {self.url} does not serve {self.bundle.path.name}'s {self.graph} "
                              "graph:\n  - " + "\n  - ".join(problems))
        config = client.get_model_config(self.model_name)
        config = _metadata_dict(protocol, config)
        config = config.get("config", config)
        self._max_batch = int(config.get("max_batch_size", 0)) or None
        params = config.get("parameters") or {}
        served_id = (params.get("ts2net_bundle_id") or {}).get("string_value")
        if served_id and served_id != self.bundle.content_id:
            raise BundleError(f"{self.model_name} at {self.url} serves bundle id {served_id}, {self.bundle.path} is "
                              f"{self.bundle.content_id}: embeddings of different bundles are not comparable")
        self.served_precision = (params.get("ts2net_precision") or {}).get("string_value")
        self._protocol, self._module, self._client = protocol, module, client

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._module
        inputs = []
        for spec in self.input_specs:
            array = np.ascontiguousarray(feed[spec["name"]])
            tensor = module.InferInput(spec["name"], list(array.shape), WIRE_DTYPES[spec["dtype"]])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in self.output_names]
        kwargs = {"client_timeout": self.timeout_s} if self._protocol == "grpc" else {}
        result = self._client.infer(self.model_name, inputs, outputs=outputs, **kwargs)
        return {name: result.as_numpy(name) for name in self.output_names}

    def _close_impl(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


class ServerEncoder(BundleEncoder):
    """`BundleEncoder` whose graphs run on a Triton server at `url`."""

    def __init__(self, bundle: Bundle | str | os.PathLike, url: str, batch_size: int = 16, timeout_s: float = 60.0):
        super().__init__(bundle if isinstance(bundle, Bundle) else open_bundle(bundle, verify=False),
                         backend="triton", batch_size=batch_size)
        self.url = url
        self.timeout_s = timeout_s

    def backend(self, graph: str) -> Backend:
        if graph not in self._backends:
            self._backends[graph] = ServerBackend(self.bundle, graph, self.url, self.timeout_s).load()
        return self._backends[graph]


def encode_texts(bundle: Bundle | str | os.PathLike, url: str, texts: list[str]) -> np.ndarray:
    """Captions -> float32 [n, D] text embeddings computed by the server at `url`."""
    with ServerEncoder(bundle, url) as encoder:
        return encoder.encode_texts(texts)


def encode_video_files(bundle: Bundle | str | os.PathLike, url: str, paths: list[str], skip_bad: bool = False):
    """Video files -> `VideoBatchResult` (decoded here, encoded by the server at `url`)."""
    with ServerEncoder(bundle, url) as encoder:
        return encoder.encode_video_files(paths, skip_bad=skip_bad, progress=False)
