"""Serving a bundle's encoders with NVIDIA Triton Inference Server.

Two ways, one contract (the manifest's I/O names, dtypes and shapes, batch as the leading axis):

* `repository` writes a Triton model repository for the production server (the NGC
  `tritonserver` container): `ts2net_text` and `ts2net_video`, each a `config.pbtxt` and the graph
  or TensorRT plan in `1/`; `validate` checks one offline (`ts2net triton --check`).
* `server` starts a real Triton on this machine through PyTriton, serving the runtime's own
  backends (ONNX Runtime / OpenVINO) with Triton's dynamic batching. PyTriton's bundled
  `tritonserver` needs its own Python 3.13 environment (`environment`, `make serve-setup`); the
  code that runs inside it is `serve_main`. `client` talks to either server with `tritonclient`,
  and `load` is the bounded load test (`make serve-load`).

Nothing here imports torch; `tritonclient` and `onnx` are imported where they are used.
"""
MODEL_NAMES = {"text": "ts2net_text", "video": "ts2net_video"}
