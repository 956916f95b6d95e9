"""Open a bundle directory: check its manifest, verify its files, expose its facts.

A bundle is only as trustworthy as the files in it, and a graph that is silently swapped or
truncated gives plausible-looking wrong embeddings. So every file the runtime uses is checked
against the sha256 the exporter wrote into `manifest.json` before it is handed out: all of them
up front with ``open_bundle(path, verify=True)`` (the default), or each one the first time it is
used with ``verify=False`` (cheaper when only the text graph of a large bundle is needed). Either
way a bad file is a `BundleError` that names the file and says what to do.

Only the manifest is read here; nothing imports torch, `ts2net` or `export`.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .bundle_format import MANIFEST_NAME, schema_problems
from .files import sha256_file

class BundleError(ValueError):
    """A bundle that cannot be used as it is: bad manifest, missing or altered file, invalid export."""




# ------------------------------------------------------------------------------ the bundle
class Bundle:
    """A checked bundle directory. Construct with `open_bundle`."""

    def __init__(self, path: str | os.PathLike, manifest: Mapping[str, Any]):
        self._path = Path(path)
        self._manifest = manifest
        self._verified: set[str] = set()
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"Bundle({str(self._path)!r}, model={self.model.get('name')!r}, id={self.content_id})"

    # -------------------------------------------------------------- plain facts
    path = property(lambda self: self._path)
    manifest = property(lambda self: self._manifest)
    model = property(lambda self: self._manifest["model"], doc="The model config dict (TS2NetConfig fields).")
    max_frames = property(lambda self: int(self.model["max_frames"]))
    max_words = property(lambda self: int(self.model["max_words"]))
    image_size = property(lambda self: int(self.model["image_size"]))
    embed_dim = property(lambda self: int(self.model["embed_dim"]))
    valid = property(lambda self: bool(self._manifest.get("valid")))

    @property
    def top_k(self) -> int | None:
        """Patches selected per frame; None when the model has no token selection (no patch_indices)."""
        return int(self.model["top_k"]) if self.model.get("token_selection", True) else None

    @property
    def frame_mask_mode(self) -> str:
        return str(self._manifest["similarity"].get("frame_mask_mode", self.model.get("frame_mask_mode")))

    @property
    def similarity_args(self) -> dict[str, Any]:
        """Keyword arguments of `runtime.similarity` (and `compare_outputs`) for this bundle."""
        sim = self._manifest["similarity"]
        return {"logit_scale": float(sim["logit_scale"]), "frame_mask_mode": str(sim["frame_mask_mode"]),
                "tokens_per_frame": int(sim["tokens_per_frame"]), "softmax_factor": float(sim["frame_softmax_factor"])}

    @property
    def preprocessing(self) -> Mapping[str, Any]:
        return self._manifest["preprocessing"]

    @cached_property
    def content_id(self) -> str:
        """Short id of what determines an embedding: graph checksums, tokenizer checksum, preprocessing.

        Used to key caches, so a re-export with other weights, another tokenizer or another
        frame rule can never be served from a stale cache. Engines are left out on purpose:
        they are derived from the FP16 graph, and callers key caches by backend too.
        """
        parts = [f"graph {g}.{p} {e['sha256']}" for g, ps in sorted(self._manifest["graphs"].items())
                 for p, e in sorted(ps.items())]
        parts.append(f"tokenizer {self._manifest['tokenizer']['sha256']}")
        parts.append("preprocessing " + json.dumps(self.preprocessing, sort_keys=True))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    # -------------------------------------------------------------- files
    def listed_files(self) -> dict[str, str]:
        """Every file the manifest lists: file name -> where in the manifest it is listed."""
        files: dict[str, str] = {self._manifest["tokenizer"]["file"]: "tokenizer"}
        for graph, precisions in self._manifest["graphs"].items():
            for precision, entry in precisions.items():
                files[entry["file"]] = f"graphs.{graph}.{precision}"
                if "external_data" in entry:
                    files[entry["external_data"]["file"]] = f"graphs.{graph}.{precision}.external_data"
                if "openvino_ir" in entry:
                    files[entry["openvino_ir"]["file"]] = f"graphs.{graph}.{precision}.openvino_ir"
                    files[entry["openvino_ir"]["weights"]["file"]] = f"graphs.{graph}.{precision}.openvino_ir.weights"
        for graph, entry in (self._manifest.get("engines") or {}).items():
            files[entry["file"]] = f"engines.{graph}"
        if self._manifest.get("reference"):
            files[self._manifest["reference"]["file"]] = "reference"
        return files

    def _expected_sha256(self, name: str) -> str:
        for where in self._entries():
            if where["file"] == name:
                return where["sha256"]
        raise BundleError(f"{self._path}: {name} is not listed in {MANIFEST_NAME}")

    def _entries(self):
        yield self._manifest["tokenizer"]
        for precisions in self._manifest["graphs"].values():
            for entry in precisions.values():
                yield entry
                if "external_data" in entry:
                    yield entry["external_data"]
                if "openvino_ir" in entry:
                    yield entry["openvino_ir"]
                    yield entry["openvino_ir"]["weights"]
        yield from (self._manifest.get("engines") or {}).values()
        if self._manifest.get("reference"):
            yield self._manifest["reference"]

    def verify_file(self, name: str) -> Path:
        """Path of a listed file after checking it exists and matches its manifest sha256 (once per file)."""
        path = self._path / name
        if name in self._verified:
            return path
        expected = self._expected_sha256(name)
        if not path.is_file():
            raise BundleError(f"{self._path}: {name} is listed in {MANIFEST_NAME} but missing from the bundle "
                              "(incomplete copy? copy the whole bundle directory or re-export it)")
        found = sha256_file(path)
        if found != expected:
            raise BundleError(f"{self._path}: {name} does not match its checksum in {MANIFEST_NAME} "
                              f"(expected sha256 {expected[:16]}..., file has {found[:16]}...): the file was "
                              "modified or truncated after export; re-export the bundle or restore the file")
        self._verified.add(name)
        return path

    def verify(self) -> None:
        """Check every listed file; one BundleError naming every missing or altered file."""
        problems = []
        for name in self.listed_files():
            try:
                self.verify_file(name)
            except BundleError as exc:
                problems.append(str(exc))
        if problems:
            raise BundleError(problems[0] if len(problems) == 1 else
                              f"{len(problems)} bundle files failed verification:\n  - " + "\n  - ".join(problems))

    # -------------------------------------------------------------- graphs and engines
    def graph_entry(self, graph: str, precision: str = "fp32") -> Mapping[str, Any]:
        graphs = self._manifest["graphs"]
        if graph not in graphs:
            raise BundleError(f"{self._path}: no {graph!r} graph (bundle has {sorted(graphs)})")
        if precision not in graphs[graph]:
            raise BundleError(f"{self._path}: no {precision} {graph} graph (bundle has {sorted(graphs[graph])})")
        return graphs[graph][precision]

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Verified path of an ONNX graph (its external-data file, if any, is verified too)."""
        entry = self.graph_entry(graph, precision)
        if "external_data" in entry:
            self.verify_file(entry["external_data"]["file"])
        return self.verify_file(entry["file"])

    def has_graph(self, graph: str, precision: str) -> bool:
        return precision in self._manifest["graphs"].get(graph, {})

    def openvino_ir_paths(self, graph: str, precision: str) -> tuple[Path, Path] | None:
        """Verified (model .xml, weights .bin) of a graph's OpenVINO IR form, None when it has none."""
        ir = self.graph_entry(graph, precision).get("openvino_ir")
        if not ir:
            return None
        return self.verify_file(ir["file"]), self.verify_file(ir["weights"]["file"])

    def inputs(self, graph: str, precision: str = "fp32") -> list[Mapping[str, Any]]:
        return list(self.graph_entry(graph, precision)["inputs"])

    def outputs(self, graph: str, precision: str = "fp32") -> list[Mapping[str, Any]]:
        return list(self.graph_entry(graph, precision)["outputs"])

    def engine_entry(self, graph: str) -> Mapping[str, Any]:
        engines = self._manifest.get("engines") or {}
        if graph not in engines:
            raise BundleError(f"{self._path}: no TensorRT engine for the {graph} graph was built; run `make engine` "
                              f"(or `ts2net engine --bundle {self._path}`) on the GPU that will serve it")
        return engines[graph]

    def engine_path(self, graph: str) -> Path:
        return self.verify_file(self.engine_entry(graph)["file"])

    def has_engine(self, graph: str) -> bool:
        return graph in (self._manifest.get("engines") or {})

    # -------------------------------------------------------------- tokenizer and reference
    def tokenizer(self):
        """The bundle's tokenizer (loaded once)."""
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.verify_file(self._manifest["tokenizer"]["file"]))
        return self._tokenizer

    def reference(self) -> dict[str, np.ndarray]:
        """Inputs and PyTorch FP32 outputs recorded at export (`reference.npz`), without pickle."""
        entry = self._manifest.get("reference")
        if not entry:
            raise BundleError(f"{self._path}: the manifest lists no reference outputs (export did not finish?)")
        with np.load(self.verify_file(entry["file"]), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


def open_bundle(path: str | os.PathLike, verify: bool = True, allow_invalid: bool = False) -> Bundle:
    """Open and check a bundle directory.

    verify=True checks the sha256 of every listed file now; verify=False checks each file the
    first time it is used. A bundle whose manifest says ``"valid": false`` (its FP32 graphs failed
    export validation, or export stopped half way) is refused unless allow_invalid=True.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory; a bundle is the directory `ts2net export` writes")
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; is this a bundle made by `ts2net export`?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not readable JSON ({exc})") from exc
    problems = schema_problems(manifest)
    if problems:
        raise BundleError(f"{manifest_path}: not a usable ts2net bundle manifest:\n  - " + "\n  - ".join(problems))
    if manifest.get("valid") is not True and not allow_invalid:
        raise BundleError(f"{root}: the manifest marks this bundle invalid (\"valid\": false): its FP32 graphs did "
                          "not pass export validation, or the export did not finish. See validation.md in the "
                          "bundle, and export it again with `ts2net export`")
    bundle = Bundle(root, manifest)
    if verify:
        bundle.verify()
    return bundle
