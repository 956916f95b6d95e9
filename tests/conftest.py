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
def shared_clip_dir() -> Path:
    path = SHARED / "clip"
    if not (path / "bpe_simple_vocab_16e6.txt.gz").is_file():
        pytest.skip(f"shared CLIP vocabulary not found at {path} (CI clones the repo with shared/ beside it)")
    return path
