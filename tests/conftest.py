"""Shared fixtures: paths, the real CIFAR-10 JPEGs when present, an offline W&B."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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


# Lines only the libraries print (issue 19 item 3), each with the one who prints it: none may
# show without --verbose.
LIBRARY_LINES = (
    "GPU available",  # Lightning, per Trainer
    "TPU available",
    "Seed set",  # Lightning's seed_everything
    "`Trainer.fit` stopped",  # Lightning, per fit
    "LOCAL_RANK",  # Lightning, on GPUs
    "anonymous",  # W&B's warning about Lightning's anonymous=None
    "git root",  # W&B, from a save folder that does not exist yet
    "environment variables will be ignored",  # W&B, env changed after it started
    "wandb: WARNING",
    "W&B syncing is set to",  # W&B's offline hints
    "wandb leet",
)


@pytest.fixture
def users_shell(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A user's shell and a new process: the command line holds the command alone, and W&B
    runs offline, neither silent nor without git (the suite hides W&B's own lines), started
    afresh with this environment."""
    monkeypatch.setattr(sys, "argv", ["connectivity"])
    monkeypatch.delenv("WANDB_SILENT")
    monkeypatch.delenv("WANDB_DISABLE_GIT")
    import wandb

    # W&B shows some warnings once per process (silently too, in earlier tests).
    monkeypatch.setattr(wandb.errors.term, "_printed_messages", set())
    wandb.teardown()
    yield
    wandb.teardown()  # the next test's W&B starts with its own environment


def printed_lines(
    capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> list[str]:
    """Every line the command printed, then those it logged (Lightning's loggers propagate to
    pytest's) and warned; tqdm's in-place updates stay on their line, as in a log file."""
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).split("\n")  # not splitlines(): it splits at \r too
    if lines[-1] == "":
        lines.pop()
    lines += [record.getMessage() for record in caplog.records]
    # Python shows no DeprecationWarning of a library by default (jsonargparse's, here).
    hidden = (DeprecationWarning, PendingDeprecationWarning)
    lines += [str(w.message) for w in recwarn if not issubclass(w.category, hidden)]
    caplog.clear()
    recwarn.clear()
    return lines
