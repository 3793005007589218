"""Shared fixtures: paths, the real CIFAR-10 JPEGs when present, an offline W&B."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing in the tests may reach the network; runs stay on disk.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder so ``lightning_logs/`` of a test never mixes with the repo's."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shared_cifar() -> Path:
    """The real CIFAR-10 JPEG folders beside the checkout; skips on fresh clones without them."""
    if not (SHARED_CIFAR / "train").is_dir():
        pytest.skip(f"{SHARED_CIFAR} is absent (only present beside the project's own checkout)")
    return SHARED_CIFAR
