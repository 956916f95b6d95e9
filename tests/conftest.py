import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
SHARED = TESTS.parents[1] / "shared"


@pytest.fixture(scope="session")
def shared_clip_dir() -> Path:
    path = SHARED / "clip"
    if not (path / "bpe_simple_vocab_16e6.txt.gz").is_file():
        pytest.skip(f"shared CLIP vocabulary not found at {path} (CI clones the repo with shared/ beside it)")
    return path
