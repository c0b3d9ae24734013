import os
import sys
from pathlib import Path

# Before numpy loads OpenBLAS: its threads fight llama.cpp's and pyntk's for 2 cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest

from pyntk import rope  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def pytest_report_header(config):
    # every kernel listed here runs each `kernel`-parametrised test; the rest of this CPU's are absent
    return [f"PYNTK_TEST_SEED={seed()}",
            f"pyntk rotation kernels run by the tests: {', '.join(rope.kernels())} (default {rope.kernel()})"]


def seed() -> int:
    return int(os.environ.get("PYNTK_TEST_SEED", "20231"))


@pytest.fixture
def rng():
    return np.random.default_rng(seed())


@pytest.fixture(params=rope.kernels())
def kernel(request):
    """Each rotation kernel this CPU has, made the active one for the test."""
    with rope.use_kernel(request.param):
        yield request.param


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 model (read-only: copy it before editing)."""
    path = Path(os.environ.get("PYNTK_TEST_MODEL", ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.exists():
        pytest.fail(f"test model {path} missing: run `python tools/fetch_model.py` (tools/setup.sh does)")
    return path


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M model (read-only: copy it before editing)."""
    path = Path(os.environ.get("PYNTK_TEST_GEMMA", ROOT / ".cache" / "gemma-3-270m-q4_k_m.gguf"))
    if not path.exists():
        pytest.fail(f"test model {path} missing: run `python tools/fetch_model.py --model gemma3` "
                    "(tools/setup.sh --test does)")
    return path


def pytest_collection_modifyitems(config, items):
    # A test that needs a real model says so by its marker, however deep the fixture that loads
    # it: `-m "not model and not gemma"` then runs exactly the tests that need no model file.
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "model_path" in names:
            item.add_marker(pytest.mark.model)
        if "gemma_path" in names:
            item.add_marker(pytest.mark.gemma)
