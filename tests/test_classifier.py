"""ClassifierModule: backbones, weights, normalisation inside the model, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision

from connectivity.checkpoints import CheckpointError
from connectivity.classifier import ClassifierModule, build_backbone
from connectivity.data import DigitsDataModule
from connectivity.engine.split import split


def test_classifier_takes_pixels_and_keeps_torchvision_layer_names() -> None:
    module = ClassifierModule(num_classes=7, backbone="resnet18").eval()
    x = torch.rand(2, 3, 32, 32)
    logits = module(x)
    assert logits.shape == (2, 7)
    # normalisation is the first thing the network does, so the input space is pixel space
    plain = module.network.normalize(x)
    expected = torchvision.models.ResNet.forward(module.network, plain)
    assert torch.allclose(logits, expected)
    head, tail = split(module.network, "layer1")
    assert torch.allclose(tail(head(x)), logits, atol=1e-5)


def test_weights_from_a_local_state_dict_file(tmp_path: Path) -> None:
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    network = build_backbone("resnet18", str(path), num_classes=4)
    assert torch.equal(network.conv1.weight, source.conv1.weight)
    assert network.fc.out_features == 4


def test_weights_of_another_architecture_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="another architecture"):
        build_backbone("mobilenet_v3_small", str(path), num_classes=4)


def test_unknown_weights_and_backbone_names() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", "IMAGENET", num_classes=2)
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_backbone("resnet1000", None, num_classes=2)


def test_checkpoint_round_trip_and_wrong_files(tmp_path: Path) -> None:
    module = ClassifierModule(num_classes=10, backbone="resnet18")
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(module, DigitsDataModule(batch_size=16))
    path = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(path)
    loaded = ClassifierModule.from_checkpoint(path)
    assert loaded.hparams.input_shape == (3, 32, 32)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(loaded(x), module.eval()(x))

    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        ClassifierModule.from_checkpoint(not_a_checkpoint)
    with pytest.raises(CheckpointError, match="No file"):
        ClassifierModule.from_checkpoint(tmp_path / "missing.ckpt")
    other = torch.load(path, weights_only=True)
    other["hyper_parameters"]["backbone"] = "resnet34"
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="another architecture"):
        ClassifierModule.from_checkpoint(tmp_path / "other.ckpt")


def test_num_classes_must_match_the_data() -> None:
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="num_classes=3"):
        trainer.fit(ClassifierModule(num_classes=3, backbone="resnet18"), DigitsDataModule())


def test_a_classifier_and_its_network_pickle_and_normalise_once(tmp_path: Path) -> None:
    # torch.save and ddp_spawn pickle the module; the network's class is made at run time.
    import pickle

    from connectivity.classifier import with_normalization

    module = ClassifierModule(num_classes=10, backbone="resnet18").eval()
    torch.save(module, tmp_path / "module.pt")
    loaded = torch.load(tmp_path / "module.pt", weights_only=False).eval()
    network = pickle.loads(pickle.dumps(module.network))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
        assert torch.equal(network(x), module.network(x))
    assert type(network) is type(module.network)
    assert type(network).__name__ == "NormalizedResNet"
    with pytest.raises(ValueError, match="already normalises its input"):
        with_normalization(module.network, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
