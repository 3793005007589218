"""Loading user-given files safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from connectivity.errors import ConnectivityError

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointError(ConnectivityError, ValueError):
    """A file that is missing, not a checkpoint, or a checkpoint of something else."""


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: which weights a result was computed with."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to_make(path: Path) -> str:
    """The command that writes a checkpoint at ``path``, for the error that it is missing."""
    if path.parent.name == "quickstart" and (
        path.name == "classifier.ckpt" or path.name.startswith("decoder_")
    ):
        return "`connectivity quickstart` writes it (run it from the folder above lightning_logs)."
    config = f"configs/classifier/{path.stem}.yaml"
    if not (Path(__file__).resolve().parents[1] / config).is_file():
        config = "configs/classifier/<config>.yaml"
    return (
        f"`connectivity fit -c {config}` trains one and prints where it saved its best "
        "checkpoint (lightning_logs/connectivity/<run id>/checkpoints/best-*.ckpt): give that "
        f"file instead (e.g. --classifier <file>), or copy it to {path}."
    )


def nearest_checkpoint(path: Path) -> Path | None:
    """The ``*.ckpt`` file beside ``path`` whose name is nearest to its name (a typo such as
    ``clasifier.ckpt``), or None when no name is close."""
    folder = path.parent
    if not folder.is_dir():
        return None
    names = sorted(f.name for f in folder.glob("*.ckpt") if f.is_file())
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    return (folder / close[0]).resolve() if close else None


def load_file(path: str | Path) -> Any:
    """``torch.load`` a user-given file on the CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        near = nearest_checkpoint(path)
        if near is not None:
            # A typo of a file that exists: name it, rather than ask for a copy at the typo.
            raise CheckpointError(
                f"No file at {path.resolve()}. Did you mean {near}? (the nearest name of a "
                f"checkpoint in {near.parent})"
            )
        raise CheckpointError(f"No file at {path.resolve()}. {_how_to_make(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean "not loadable"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that can be loaded safely "
            f"(weights_only=True): {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from error


def load_state(module: nn.Module, state: dict[str, Any], source: str | Path) -> None:
    """Load ``state`` into ``module``, turning a mismatch into one clear error."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        details = str(error).splitlines()
        raise CheckpointError(
            f"{source} holds weights of another architecture than "
            f"{type(module).__name__} was built with: {' '.join(d.strip() for d in details[:4])}"
        ) from error


@contextmanager
def _own_hyperparameters() -> Iterator[None]:
    """Let a module built inside another's ``__init__`` save its own hyperparameters.

    LightningCLI hands the config of the module it builds to ``save_hyperparameters`` through a
    context variable, which would otherwise leak into any module loaded while it is built.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without it has nothing to leak
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def build_lightning_module(
    cls: type[ModuleT], path: str | Path, **overrides: Any
) -> tuple[ModuleT, dict[str, Any], dict[str, Any]]:
    """Build a LightningModule of class ``cls`` from the hyperparameters saved in its
    checkpoint, with freshly initialised weights (the saved ones are not loaded).

    Args:
        cls: The module class; its ``__init__`` takes the saved hyperparameters.
        path: The ``.ckpt`` file.
        **overrides: Hyperparameters replaced at construction (for example ``weights=None`` so
            that no pretrained weights are downloaded).

    Returns:
        The new module, the saved hyperparameters, and the checkpoint as loaded.

    Raises:
        CheckpointError: The file is not a Lightning checkpoint of a ``cls``.
    """
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
        checkpoint
    ):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint of a {cls.__name__} (no saved "
            "hyperparameters and state_dict)"
        )
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    try:
        with _own_hyperparameters():
            module = cls(**{**hparams, **overrides})
    except TypeError as error:
        raise CheckpointError(
            f"{path} was saved by another kind of module, not a {cls.__name__} ({error})"
        ) from error
    return module, hparams, checkpoint


def load_lightning_module(
    cls: type[ModuleT], path: str | Path, **overrides: Any
) -> tuple[ModuleT, dict[str, Any]]:
    """Rebuild a LightningModule of class ``cls`` from its checkpoint in one call.

    Args:
        cls: The module class; its ``__init__`` takes the saved hyperparameters.
        path: The ``.ckpt`` file.
        **overrides: Hyperparameters replaced at construction (for example ``weights=None`` so
            that no pretrained weights are downloaded before the saved ones are loaded).

    Returns:
        The module in eval mode with the saved weights, and the saved hyperparameters.

    Raises:
        CheckpointError: see :func:`build_lightning_module`; weights that do not fit.
    """
    module, hparams, checkpoint = build_lightning_module(cls, path, **overrides)
    load_state(module, checkpoint["state_dict"], path)
    # The module's own hook reads what it saved beside its weights, as Lightning's loading does.
    module.on_load_checkpoint(checkpoint)
    return module.eval(), hparams


def best_and_last(monitor: str, mode: str, digits: int) -> ModelCheckpoint:
    """Keep the best checkpoint by ``monitor`` (named after it) and the last one."""
    return ModelCheckpoint(
        monitor=monitor,
        mode=mode,
        save_last=True,
        filename=f"best-{{epoch}}-{{{monitor}:.{digits}f}}",
        auto_insert_metric_name=False,
    )
