import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PFKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real MBPP, PneumoniaMNIST) — tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def child_env_for(*paths, **extra) -> dict[str, str]:
    """The environment of a pfkit subprocess: ``paths`` then this checkout first on PYTHONPATH (so a worktree
    tests its own code, not the venv's editable install of another tree), one OpenMP thread (the CI
    machine is shared), ``extra`` on top."""
    path = os.pathsep.join([*map(str, paths), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


@pytest.fixture(scope="session")
def child_env():
    """``child_env(*paths, **extra)`` -> the environment for a pfkit subprocess (see ``child_env_for``)."""
    return child_env_for


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are much faster single-threaded when the sandbox workers share the 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One Chromium per test session for every browser test module (a session fixture imported into two modules
# would be two fixtures, and Playwright's sync API cannot start a second instance while the first one runs).
from _browser import chromium, page  # noqa: E402, F401
