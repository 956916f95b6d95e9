"""The dependency rule of docs/architecture.md, checked on every module of every package.

Static part: every module of every package (found with `pkgutil.walk_packages`) is parsed with
`ast`, and every import in it -- at the top, inside functions, relative or absolute -- is resolved
to the layer it reaches; an edge the table below does not allow fails with the file, line and edge.
Dynamic part: in a fresh interpreter where the packages above a layer (and torch) are made
unimportable (`sys.modules[name] = None` makes `import name` raise), every module of `runtime`
and of `synthbench` imports, so a dependency that sneaks in through a third module fails too.

ALLOWED mirrors the table in docs/architecture.md: change both together.
"""
from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: layer -> the layers its modules may import (itself included). Bottom to top.
ALLOWED = {
    "runtime": {"runtime"},
    "synthbench": {"synthbench", "runtime"},
    "ts2net": {"ts2net", "runtime"},
    "ts2net.training": {"ts2net.training", "ts2net", "synthbench", "runtime"},
    "export": {"export", "ts2net", "runtime"},
    "cli": {"cli", "export", "ts2net.training", "ts2net", "synthbench", "runtime"},
}
#: Third-party packages a layer must never import (runtime and synthbench serve without torch).
FORBIDDEN_THIRD_PARTY = {
    "runtime": {"torch", "safetensors", "torchvision"},
    "synthbench": {"torch", "safetensors", "torchvision", "click"},
}
PACKAGES = ("runtime", "synthbench", "ts2net", "export", "cli")


def layer_of(module: str) -> str | None:
    """The most specific layer a dotted module name belongs to (None: not one of ours)."""
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def all_modules() -> list[tuple[str, Path, bool]]:
    """(dotted name, source file, is package) of every module of every package, walked with pkgutil."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        found.append((package, Path(spec.origin), True))
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=package + "."):
            sub = importlib.util.find_spec(info.name)
            found.append((info.name, Path(sub.origin), info.ispkg))
    return found


def imports_of(name: str, path: Path, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported dotted name) of every import statement in a module, relative ones resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            else:
                base = node.module
            # `from . import datasets` imports the submodule runtime.datasets
            found += [(node.lineno, f"{base}.{alias.name}" if node.module is None else base) for alias in node.names]
    return found


def violations() -> list[str]:
    problems = []
    for name, path, is_package in all_modules():
        source_layer = layer_of(name)
        for line, target in imports_of(name, path, is_package):
            where = f"{path.relative_to(REPO)}:{line}"
            target_layer = layer_of(target)
            if target_layer is not None and target_layer not in ALLOWED[source_layer]:
                problems.append(f"{where}: {name} imports {target} ({source_layer} -> {target_layer} is not "
                                "allowed by docs/architecture.md)")
            top = target.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(source_layer, ()):
                problems.append(f"{where}: {name} imports {target} ({source_layer} must not import {top})")
    return problems


def test_every_package_is_walked():
    names = {name for name, _, _ in all_modules()}
    # one module of each layer, and the nested packages: a walk that stopped early would pass vacuously
    assert {"runtime.bundle_format", "runtime.benchmark.peak", "runtime.evaluation.ranking", "synthbench.scene",
            "ts2net.model", "ts2net.training.loop", "export.exporter", "cli.main"} <= names
    assert {layer_of(n) for n in names} == set(ALLOWED)


def test_layer_of_takes_the_most_specific_layer():
    assert layer_of("ts2net.training.loop") == "ts2net.training"
    assert layer_of("ts2net.model") == "ts2net"
    assert layer_of("runtime") == "runtime"
    assert layer_of("numpy") is None and layer_of("runtimes") is None


def test_imports_are_resolved_including_relative_and_nested_ones(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import datasets\nfrom ..backends import X\ndef f():\n    import export.engine\n")
    found = {target for _, target in imports_of("runtime.evaluation.mod", source, False)}
    assert found == {"runtime.evaluation.datasets", "runtime.backends", "export.engine"}


def test_every_import_follows_the_dependency_rule():
    problems = violations()
    assert not problems, "dependency rule broken:\n  " + "\n  ".join(problems)


BLOCKED_IMPORT = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    package, blocked = sys.argv[1], json.loads(sys.argv[2])
    for name in blocked:
        sys.modules[name] = None          # `import name` now raises ImportError
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, prefix=package + ".")]
    for name in names:
        importlib.import_module(name)
    leaked = [m for m in blocked if sys.modules.get(m) is not None]
    print("IMPORTED", len(names), "LEAKED", leaked)
""")


@pytest.mark.parametrize("package, blocked", [
    ("runtime", ["torch", "ts2net", "export", "cli", "synthbench"]),
    ("synthbench", ["torch", "ts2net", "export", "cli"]),
])
def test_torch_free_packages_import_without_torch_or_upper_layers(package, blocked):
    import json

    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, package, json.dumps(blocked)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "LEAKED []" in output, output
