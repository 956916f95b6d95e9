"""The README written into a Triton model repository: how to serve it and call it, with its own numbers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .repository import TRITON_DTYPES

# Triton's wire datatype names (HTTP/gRPC "datatype"), from the manifest dtypes
WIRE_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "bool": "BOOL",
               "int8": "INT8", "uint8": "UINT8"}


def _tensor_row(tensor: Mapping[str, Any]) -> str:
    return (f"| `{tensor['name']}` | {tensor['dtype']} | {TRITON_DTYPES[tensor['dtype']]} | "
            f"{list(tensor['shape'])} |")


def repository_readme(record: Mapping[str, Any], plans, out: Path) -> str:
    text_plan, video_plan = plans
    text_in, video_in = text_plan.inputs[0], video_plan.inputs
    words = text_in["shape"][1]
    lines = [
        "# TS2-Net encoders: Triton model repository",
        "",
        f"Written by `ts2net triton` from bundle `{record['bundle']['path']}` (id `{record['bundle']['id']}`, model "
        f"`{record['bundle']['model']}`) for Triton's **{record['backend']}** backend, precision "
        f"**{record['precision']}**. Check it again at any time with `ts2net triton --check {out}`.",
        "",
        "| model | graph | file in `1/` | max_batch_size | preferred batches | instances |",
        "|---|---|---|---|---|---|",
    ]
    for plan in plans:
        lines.append(f"| `{plan.name}` | {plan.graph} | `{plan.model_file}` (from `{plan.source['file']}`) | "
                     f"{plan.max_batch} | {plan.preferred} ({plan.batch_source}) | {plan.instances} |")
    lines += ["", "Tensors (the batch is the leading axis; configs list the other dims):", "",
              "| tensor | dtype | Triton type | shape |", "|---|---|---|---|"]
    for plan in plans:
        lines += [_tensor_row(t) for t in plan.inputs + plan.outputs]
    lines += [
        "",
        "Inputs are model-ready: `input_ids` are CLIP BPE token ids (SOT, tokens, EOT, zero padding, "
        f"{words} ids), `frames` are normalized frames with padded frames all zero and `frame_mask` marks the real "
        "ones. Tokenizing and decoding happen on the client, with the bundle's tokenizer and preprocessing: "
        "`ts2net encode --bundle BUNDLE --server URL ...` does both and calls this server. Text-video similarity is "
        "computed from `text_embeds` and `frame_embeds` outside the graphs (docs/bundle-format.md).",
        "",
        "## Serve",
        "",
        "With the NGC container (its release must bundle the backend used here"
        + (f", and TensorRT {plans[0].source.get('tensorrt_version')}" if record["backend"] == "tensorrt" else "")
        + "):",
        "",
        "```sh",
        f"docker run --rm {'--gpus all ' if record['backend'] != 'openvino' else ''}"
        f"-p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD/{out.name}:/models\" \\",
        "  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        "```",
        "",
        "or, with `tritonserver` installed: `tritonserver --model-repository=" + f"{out}`.",
        "",
    ]
    if record["backend"] == "tensorrt":
        gpu = text_plan.source.get("gpu") or {}
        lines += [
            "### TensorRT plans are tied to their GPU",
            "",
            f"The plans were built on **{gpu.get('name')}** (compute capability **{gpu.get('compute_capability')}**) "
            f"with TensorRT **{text_plan.source.get('tensorrt_version')}**. They load only on GPUs of that compute "
            "capability, in a Triton whose TensorRT is that same release. Each config lists the plan under "
            "`cc_model_filenames` for its compute capability and records both facts in `parameters` "
            "(`ts2net_compute_capability`, `ts2net_tensorrt_version`). For a fleet with several GPU generations, "
            "build the plans on each (`make engine`), copy each as `1/model.<cc>.plan` and add it to "
            "`cc_model_filenames`; `max_batch_size` must stay within every plan's optimization profile.",
            "",
        ]
    frames_shape = [1] + list(video_in[0]["shape"][1:])
    lines += [
        "## Call it",
        "",
        "Health: `curl -s localhost:8000/v2/health/ready -o /dev/null -w '%{http_code}\\n'` (200 when ready). "
        "Metrics (batches executed per model, `nv_inference_exec_count`): `curl -s localhost:8002/metrics`.",
        "",
        f"A text request over HTTP/JSON (the bundle tokenizer's ids of {record['example']['caption']!r}):",
        "",
        "```sh",
        "curl -s -X POST localhost:8000/v2/models/ts2net_text/infer -H 'Content-Type: application/json' -d '{",
        f"  \"inputs\": [{{\"name\": \"{text_in['name']}\", \"shape\": [1, {words}], \"datatype\": "
        f"\"{WIRE_DTYPES[text_in['dtype']]}\",",
        f"              \"data\": [{', '.join(str(v) for v in record['example']['input_ids'])}]}}]}}'",
        "```",
        "",
        "With `tritonclient` (`pip install 'tritonclient[http]'`):",
        "",
        "```python",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        "client = httpclient.InferenceServerClient(\"localhost:8000\")",
        f"ids = np.zeros((1, {words}), np.int64)  # from the bundle's tokenizer",
        f"ids_in = httpclient.InferInput(\"{text_in['name']}\", list(ids.shape), \"{WIRE_DTYPES[text_in['dtype']]}\")",
        "ids_in.set_data_from_numpy(ids)",
        f"text_embeds = client.infer(\"ts2net_text\", [ids_in]).as_numpy(\"{text_plan.outputs[0]['name']}\")",
        "",
        f"frames = np.zeros({tuple(frames_shape)}, np.float32)   # normalized frames, padding all zero",
        f"mask = np.ones((1, {video_in[1]['shape'][1]}), np.int64)",
        "inputs = []",
        f"for name, array in ((\"{video_in[0]['name']}\", frames), (\"{video_in[1]['name']}\", mask)):",
        "    tensor = httpclient.InferInput(name, list(array.shape), \"FP32\" if array.dtype == np.float32 else \"INT64\")",
        "    tensor.set_data_from_numpy(array)",
        "    inputs.append(tensor)",
        "result = client.infer(\"ts2net_video\", inputs)",
        f"frame_embeds = result.as_numpy(\"{video_plan.outputs[0]['name']}\")",
        "```",
        "",
        "The same from the toolchain, tokenizing and decoding with the bundle: "
        "`ts2net encode --bundle BUNDLE --server http://localhost:8000 --text \"a dog runs\" --video clip.mp4 "
        "--out embeds.npz`.",
        "",
    ]
    return "\n".join(lines)

