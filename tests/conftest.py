import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def pytest_report_header(config):
    return f"PYNTK_TEST_SEED={seed()}"


def seed() -> int:
    return int(os.environ.get("PYNTK_TEST_SEED", "20231"))


@pytest.fixture
def rng():
    return np.random.default_rng(seed())


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 model (read-only: copy it before editing)."""
    path = Path(os.environ.get("PYNTK_TEST_MODEL", ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.exists():
        pytest.fail(f"test model {path} missing: run `python tools/fetch_model.py` (tools/setup.sh does)")
    return path
