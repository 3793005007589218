"""The code base stays ruff-clean (ruff is in the dev extra)."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    done = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
