"""Loading user-given files: digests, safe loading, and errors that say what to do."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from connectivity.checkpoints import (
    CheckpointError,
    best_and_last,
    file_digest,
    load_file,
    load_lightning_module,
    load_state,
    nearest_checkpoint,
)
from connectivity.classifier import ClassifierModule


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    file = tmp_path / "abc.bin"
    file.write_bytes(b"abc")
    # FIPS 180-2's test vector for "abc".
    assert file_digest(file) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_typo_of_a_checkpoint_name_is_answered_with_the_file_that_exists(
    tmp_path: Path,
) -> None:
    (tmp_path / "classifier.ckpt").write_bytes(b"x")
    (tmp_path / "decoder_layer1.ckpt").write_bytes(b"x")
    assert nearest_checkpoint(tmp_path / "clasifier.ckpt") == (tmp_path / "classifier.ckpt")
    assert nearest_checkpoint(tmp_path / "weights.ckpt") is None
    assert nearest_checkpoint(tmp_path / "no_folder" / "classifier.ckpt") is None
    with pytest.raises(CheckpointError, match=r"Did you mean .*classifier\.ckpt\?"):
        load_file(tmp_path / "clasifier.ckpt")


def test_a_missing_file_names_the_command_that_writes_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="`connectivity quickstart` writes it"):
        load_file(tmp_path / "quickstart" / "classifier.ckpt")
    # A stem that names one of the shipped configs gets that config in the command.
    with pytest.raises(
        CheckpointError, match=r"connectivity fit -c configs/classifier/quick\.yaml"
    ):
        load_file(tmp_path / "quick.ckpt")
    with pytest.raises(CheckpointError, match=r"configs/classifier/<config>\.yaml"):
        load_file(tmp_path / "mine.ckpt")


class _Pickled:
    """A class a safe (weights_only) load must refuse to build."""


def test_files_that_are_not_safe_checkpoints_are_refused_with_the_reason(tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_file(text)
    unsafe = tmp_path / "object.ckpt"
    unsafe.write_bytes(pickle.dumps(_Pickled(), protocol=2))
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_file(unsafe)
    saved = tmp_path / "tensors.pt"
    torch.save({"w": torch.arange(3.0)}, saved)
    assert torch.equal(load_file(saved)["w"], torch.arange(3.0))


def test_weights_of_another_architecture_are_one_clear_error() -> None:
    module = nn.Linear(3, 2)
    before = module.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"x\.ckpt holds weights of another architecture"):
        load_state(module, nn.Linear(4, 2).state_dict(), "x.ckpt")
    assert torch.equal(module.weight, before)


def test_a_checkpoint_of_something_else_is_not_loaded_as_a_module(tmp_path: Path) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint of a ClassifierModule"):
        load_lightning_module(ClassifierModule, plain)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"latent_size": 3}}, other)
    with pytest.raises(CheckpointError, match="saved by another kind of module"):
        load_lightning_module(ClassifierModule, other)


def test_best_and_last_names_the_best_file_after_its_monitored_value() -> None:
    callback = best_and_last("val_acc", "max", 4)
    assert (callback.monitor, callback.mode, callback.save_last) == ("val_acc", "max", True)
    assert callback.filename == "best-{epoch}-{val_acc:.4f}"
