import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
SHARED = TESTS.parents[1] / "shared"
# Tests export the fixed-seed tiny preset as "the default model", never the shipped demo weights
# (set in the environment so subprocesses started by tests see it too).
os.environ["TS2NET_DEFAULT_MODEL"] = "builtin-tiny"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The fixed-seed tiny model exported ONCE per session (an ExportResult); do not modify its files:
    tests that damage a bundle work on a copy. Its INT8 graphs are calibrated on the embedded
    benchmark, as `ts2net export` does by default."""
    from functools import partial

    from cli.calibration import embedded_benchmark_source
    from export.exporter import export_bundle

    return export_bundle(tmp_path_factory.mktemp("tiny-bundle"), progress=False,
                         calibration_source=partial(embedded_benchmark_source, progress=False))


@pytest.fixture(scope="session")
def bundle_dir(tiny_export) -> Path:
    """The directory of the session's tiny bundle (shared: do not modify it)."""
    return tiny_export.bundle


@pytest.fixture(scope="session")
def colour_clips(tmp_path_factory) -> Path:
    """Six small coloured clips video0..video5 (tests/retrieval_data.py), written once per session; do not modify."""
    from retrieval_data import write_colour_clips

    return write_colour_clips(tmp_path_factory.mktemp("clips") / "videos")


@pytest.fixture(scope="session")
def shared_clip_dir() -> Path:
    path = SHARED / "clip"
    if not (path / "bpe_simple_vocab_16e6.txt.gz").is_file():
        pytest.skip(f"shared CLIP vocabulary not found at {path} (CI clones the repo with shared/ beside it)")
    return path
