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


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet18 trained briefly on the embedded digits (over 90% test accuracy)."""
    import lightning as L

    from connectivity.classifier import ClassifierModule
    from connectivity.data import DigitsDataModule

    folder = tmp_path_factory.mktemp("digits_classifier")
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=folder,
    )
    trainer.fit(ClassifierModule(num_classes=10, backbone="resnet18"), DigitsDataModule())
    path = folder / "classifier.ckpt"
    trainer.save_checkpoint(path)
    return path
