"""The runtime's commands work on a machine without torch: CLI help, `ts2net parity` and `ts2net bench`.

(That every runtime module imports without torch, `ts2net` or `export` is tests/test_architecture.py.)
The checks run in a fresh interpreter where `torch`, `ts2net` and `export` are made unimportable
(`sys.modules[name] = None` makes `import name` raise ImportError), so any import of them, direct
or through a dependency, fails the test instead of passing silently because torch happens to be
installed here.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    for blocked in ("torch", "ts2net", "export"):
        sys.modules[blocked] = None

    import runtime
    for name in runtime.__all__:          # every public name resolves without torch
        getattr(runtime, name)

    from click.testing import CliRunner
    from cli.main import main

    def run(args):
        result = CliRunner().invoke(main, args)
        print(f"== {' '.join(args[:1])} exit={result.exit_code}")
        print(result.output)
        if result.exception and not isinstance(result.exception, SystemExit):
            import traceback
            traceback.print_exception(result.exception)
        return result.exit_code

    bundle, out = sys.argv[1], sys.argv[2]
    codes = {
        "help": run(["--help"]),
        "parity-help": run(["parity", "--help"]),
        "bench-help": run(["bench", "--help"]),
        "export": run(["export", "--out", out + "/bundle"]),
        "parity": run(["parity", "--bundle", bundle, "--backend", "ort-cpu", "--out", out + "/parity", "--no-progress"]),
        "bench": run(["bench", "--bundle", bundle, "--precisions", "fp32", "--batch-sizes", "1", "--warmup", "0",
                      "--iters", "2", "--peak-sizes", "64", "--out", out + "/bench", "--no-progress"]),
    }
    leaked = [m for m in ("torch", "ts2net", "export") if sys.modules.get(m) is not None]
    print("RESULT", codes, "LEAKED", leaked)
""")


def test_runtime_and_its_cli_run_without_torch(bundle_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle_dir), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert ("RESULT {'help': 0, 'parity-help': 0, 'bench-help': 0, 'export': 1, 'parity': 0, 'bench': 0} LEAKED []"
            in output), output
    # `ts2net export` without the export extra: one line naming what is missing, no traceback
    assert "Error: `ts2net export` needs 'export" in output and "which is not installed" in output
    assert "Traceback" not in output
    assert "parity" in output and "bench" in output  # the group lists its commands
    parity = json.loads((tmp_path / "parity" / "parity.json").read_text())
    assert parity["passed"] and parity["backend"] == "ort-cpu"
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    measured = {r["backend"] for r in bench["results"]}  # the deployed backends, no PyTorch row without torch
    assert "ort-cpu" in measured and measured <= {"ort-cpu", "openvino"}
    assert "not importable" in bench["torch_baseline"]
    assert any(s["backend"] == "torch-eager" for s in bench["skipped"])


def test_export_without_torch_says_to_install_the_export_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from click.testing import CliRunner\nfrom cli.main import main\n"
            f"print(CliRunner().invoke(main, ['export', '--out', {str(tmp_path / 'b')!r}]).output)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ("Error: `ts2net export` needs 'torch', which is not installed. "
                                   "pip install 'ts2net-deploy[export]'"), proc.stdout
