"""Torch-free serving of a ts2net-deploy bundle.

Nothing in this package imports torch, `ts2net` or `export` (a test runs it with torch made
unimportable). Public names are resolved lazily so that `import runtime` stays cheap and a
missing optional backend (onnxruntime-gpu, TensorRT) only matters to the code that uses it.
"""
from __future__ import annotations

import importlib

# public name -> module (relative to this package) that defines it
_EXPORTS = {
    "load_tokenizer": "tokenizer",
    "ClipTokenizer": "tokenizer",
    "build_tokenizer_json": "tokenizer",
    "find_bpe_vocab": "tokenizer",
    "load_video": "video",
    "VideoDecodeError": "video",
    "sample_frame_numbers": "video",
    "sample_video": "video",
    # the module is not named `similarity`, so the package attribute stays the function
    "similarity": "frame_similarity",
    "effective_frame_mask": "frame_similarity",
    "dsl_rescale": "frame_similarity",
    "frame_scores": "frame_similarity",
    # `runtime.explain(bundle, video, query)`; the module is `explanation` so the name stays the function
    "explain": "explanation",
    "explain_indexed": "explanation",
    "retrieval_metrics": "metrics",
    "Bundle": "bundle",
    "BundleError": "bundle",
    "open_bundle": "bundle",
    "create_backend": "backends",
    "available_backends": "backends",
    "BundleEncoder": "encoder",
    # encoding through a Triton server (`ts2net serve` or a `ts2net triton` repository)
    "ServerEncoder": "triton.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
