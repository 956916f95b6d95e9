"""The `ts2net` command line (click): the root group and its lazy command table.

The group itself is torch-free: each subcommand's module (one per command family in this package)
is imported only when it runs, so `ts2net eval` works on a machine with only the runtime installed,
while `ts2net export` / `ts2net train` say to install the export extra (torch).
"""
from __future__ import annotations

import importlib

import click

# command name -> (module, function, one-line help shown by `ts2net --help`)
COMMANDS = {
    "export": ("cli.export", "export_command", "Export a checkpoint to a bundle (ONNX FP32, FP16, INT8, reference, manifest)."),
    "quantize": ("cli.export", "quantize_command", "Add INT8 graphs (ONNX Runtime + NNCF OpenVINO IR) to a bundle."),
    "int8-study": ("cli.int8_study", "int8_study_command",
                   "Measure every INT8 recipe (NNCF, ONNX Runtime static / dynamic) on a bundle in one run."),
    "engine": ("cli.export", "engine_command", "Build TensorRT engines for a bundle (needs TensorRT and a GPU)."),
    "train": ("cli.train", "train_command", "Train a TS2-Net (single process or torchrun)."),
    "train-tokenizer": ("cli.train_tokenizer", "train_tokenizer_command",
                        "Train a caption BPE tokenizer on a benchmark's train captions."),
    "synthbench": ("cli.synthbench", "synthbench_command", "Generate the synthetic text-video benchmark (resumable)."),
    "parity": ("cli.parity", "parity_command", "Check a bundle's outputs against its PyTorch reference."),
    "eval": ("cli.evaluate", "eval_command", "Text-video retrieval evaluation (MSR-VTT 1k-A style)."),
    "bench": ("cli.bench", "bench_command", "Latency / throughput benchmark of a bundle's backends."),
    "index": ("cli.index", "index_command", "Encode a folder of videos into a search index."),
    "search": ("cli.index", "search_command", "Search an index with a text query."),
    "bench-search": ("cli.search", "bench_search_command",
                     "Search engines (scan, faiss, milvus) on synthetic collections: latency, recall, memory."),
    "cpp-bench": ("cli.cpp_bench", "cpp_bench_command",
                  "C++ (ts2net-cpp) vs Python decode + encode time per video on the same files."),
    "explain": ("cli.explain", "explain_command",
                "Why a video matched a query: frame weights and selected patches (PNG + JSON)."),
    "summary": ("cli.summary", "summary_command", "The demo's one-page summary report (and the ablation table)."),
    "encode": ("cli.triton", "encode_command", "Encode captions / videos to .npz, locally or via --server."),
    "triton": ("cli.triton", "triton_command", "Write (or --check) a Triton model repository for tritonserver."),
    "serve": ("cli.triton", "serve_command", "Serve the encoders with Triton here (PyTriton, Python 3.13)."),
    "serve-load": ("cli.triton", "serve_load_command", "Bounded load test of `ts2net serve` on 127.0.0.1."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            missing = exc.name or str(exc)
            hint = "pip install 'ts2net-deploy[export]'" if missing.split(".")[0] in ("torch", "onnx", "onnxslim",
                                                                                    "safetensors") else ""
            raise click.ClickException(f"`ts2net {name}` needs {missing!r}, which is not installed. {hint}".strip())

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, _, help_text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ts2net-deploy: export TS2-Net to ONNX / TensorRT and serve it without torch."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
