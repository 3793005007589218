"""DecoderModule: the paper's decoder designs, training against a frozen head, checkpoints, CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch import nn

from connectivity.checkpoints import CheckpointError
from connectivity.classifier import ClassifierModule
from connectivity.cli.main import main
from connectivity.data import DigitsDataModule
from connectivity.decoder import (
    DecoderError,
    DecoderModule,
    MapDecoder,
    VectorDecoder,
    build_decoder,
    mean_image_baseline,
    upsampling_stages,
)
from connectivity.engine.split import LayerError, split
from connectivity.errors import ConnectivityError
from connectivity.reporting.drawing import load_decoders
from connectivity.runs.paths import Experiment, run_paths
from tests.conftest import CONFIGS

DECODER_CONFIGS = CONFIGS / "decoder"


def _save_classifier(path: Path, backbone: str, input_shape: tuple[int, int, int] | None) -> Path:
    """A random-weight classifier checkpoint in the layout Lightning writes."""
    module = ClassifierModule(num_classes=10, backbone=backbone, input_shape=input_shape)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def resnet50_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's classifier architecture (random weights) recorded as fit at 224x224."""
    return _save_classifier(
        tmp_path_factory.mktemp("resnet50") / "r50.ckpt", "resnet50", (3, 224, 224)
    )


def _layers(decoder: nn.Module) -> list[tuple]:
    """(kind, output channels, kernel) of each layer of a decoder's body."""
    return [
        (type(m).__name__, getattr(m, "out_channels", None), getattr(m, "kernel_size", None))
        for m in decoder.body
    ]


def _stage(width: int, activation: str) -> list[tuple]:
    block = [("ConvTranspose2d", width, (3, 3)), (activation, None, None)]
    return [*block, ("BatchNorm2d", None, None)] * 3


UPSAMPLE = ("Upsample", None, None)
OUTPUT = [("Conv2d", 3, (3, 3)), ("Sigmoid", None, None)]


def test_last_layer_decoder_is_table_3() -> None:
    decoder = build_decoder((2048,), (3, 32, 32))
    assert isinstance(decoder, VectorDecoder)
    assert isinstance(decoder.project, nn.Identity)  # 2048 = 128x4x4: reshaped, no Linear
    expected = _stage(512, "LeakyReLU")
    for _ in range(3):
        expected += [UPSAMPLE, *_stage(256, "LeakyReLU")]
    assert _layers(decoder) == [*expected, *OUTPUT]
    assert all(m.negative_slope == 0.3 for m in decoder.body if isinstance(m, nn.LeakyReLU))


def test_first_hidden_layer_decoder_is_table_2_with_upsampling() -> None:
    decoder = build_decoder((256, 56, 56), (3, 224, 224))
    assert isinstance(decoder, MapDecoder)
    block = [
        ("ConvTranspose2d", 256, (5, 5)),
        ("ReLU", None, None),
        ("BatchNorm2d", None, None),
        ("ConvTranspose2d", 256, (3, 3)),
        ("ReLU", None, None),
        ("BatchNorm2d", None, None),
        ("ConvTranspose2d", 256, (3, 3)),
    ]
    stages = [UPSAMPLE, *_stage(256, "ReLU"), UPSAMPLE, *_stage(256, "ReLU")]
    assert _layers(decoder) == [*block, *block, *stages, *OUTPUT]


@pytest.mark.parametrize(
    ("point_shape", "image_shape"),
    [
        ((256, 56, 56), (3, 224, 224)),  # ResNet50 layer1 at 224
        ((2048,), (3, 224, 224)),  # ResNet50 flatten at 224
        ((2048, 1, 1), (3, 224, 224)),  # ResNet50 avgpool: a (C, 1, 1) map is a vector
        ((1024, 14, 14), (3, 224, 224)),  # layer3: more upsampling stages than Table 2's two
        ((512, 13, 13), (3, 100, 100)),  # 13 * 8 = 104: resized to 100
        ((64, 8, 8), (3, 32, 32)),  # ResNet18 layer1 at 32
    ],
)
def test_paper_width_decoders_reach_the_input_resolution(
    point_shape: tuple[int, ...], image_shape: tuple[int, int, int]
) -> None:
    # On the meta device: shapes are checked at the paper's widths without any arithmetic.
    with torch.device("meta"):
        decoder = build_decoder(point_shape, image_shape)
        images = decoder(torch.empty(2, *point_shape))
    assert images.shape == (2, *image_shape)


def test_upsampling_stages() -> None:
    assert upsampling_stages((56, 56), (224, 224)) == 2
    assert upsampling_stages((8, 8), (32, 32)) == 2
    assert upsampling_stages((13, 13), (100, 100)) == 3
    assert upsampling_stages((32, 32), (32, 32)) == 0


@pytest.mark.parametrize(
    ("input_shape", "layer", "point_shape"),
    [
        ((3, 224, 224), "layer1", (256, 56, 56)),
        ((3, 224, 224), "flatten", (2048,)),
        ((3, 32, 32), "layer1", (256, 8, 8)),
        ((3, 32, 32), "flatten", (2048,)),
    ],
)
def test_resnet50_decoders_give_images_of_the_input_shape(
    resnet50_224: Path,
    input_shape: tuple[int, int, int],
    layer: str,
    point_shape: tuple[int, ...],
) -> None:
    override = None if input_shape == (3, 224, 224) else input_shape
    module = DecoderModule(str(resnet50_224), layer, width=4, input_shape=override)
    assert module.layer_shape == point_shape
    assert module.hparams.input_shape == input_shape
    points = module.encode(torch.rand(1, *input_shape))
    assert points.shape == (1, *point_shape)
    images = module.decode(points)
    assert images.shape == (1, *input_shape)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize(
    ("layer", "point_shape"),
    [("layer1", (64, 8, 8)), ("avgpool", (512, 1, 1)), ("flatten", (512,))],
)
def test_digits_decoders_give_images_of_the_input_shape(
    digits_classifier: Path, layer: str, point_shape: tuple[int, ...]
) -> None:
    module = DecoderModule(str(digits_classifier), layer, width=4)
    assert module.layer_shape == point_shape
    assert isinstance(module.decoder, MapDecoder if layer == "layer1" else VectorDecoder)
    assert module.decode(torch.randn(3, *point_shape)).shape == (3, 3, 32, 32)


class _HeadWatcher(L.Callback):
    """Records, at every training batch, whether the head was in eval mode and frozen."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        head = pl_module.head.network
        frozen = not any(p.requires_grad for p in head.parameters())
        in_eval = not any(m.training for m in head.modules())
        self.modes.append(frozen and in_eval and pl_module.decoder.training)


def test_decoder_learns_while_the_head_stays_frozen(
    digits_classifier: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=32)
    module = DecoderModule(str(digits_classifier), "layer1", width=8)
    head_before = {k: v.clone() for k, v in module.head.state_dict().items()}
    watcher = _HeadWatcher()
    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        callbacks=[watcher],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)

    baseline = mean_image_baseline(data.train_dataloader(), data.val_dataloader())
    val_mse = float(trainer.callback_metrics["val/mse"])
    assert val_mse < 0.7 * baseline, (val_mse, baseline)
    psnr = float(trainer.callback_metrics["val/psnr"])
    assert psnr == pytest.approx(-10 * math.log10(val_mse), abs=0.05)

    # the classifier's head: frozen, in eval mode at every step, its weights and BN stats kept
    assert len(watcher.modes) == trainer.global_step and all(watcher.modes)
    head_after = module.head.state_dict()
    assert all(torch.equal(head_before[k], head_after[k]) for k in head_before)
    fresh, _ = split(ClassifierModule.from_checkpoint(digits_classifier).network, "layer1")
    assert all(torch.equal(v, head_after[f"network.{k}"]) for k, v in fresh.state_dict().items())

    # originals above reconstructions, one PNG per validation epoch (none for the sanity check)
    pngs = sorted((Path(trainer.log_dir) / "reconstructions").glob("*.png"))
    assert [p.name for p in pngs] == ["epoch=000.png", "epoch=001.png"]
    width, height = Image.open(pngs[-1]).size
    assert width >= 8 * 96 and height >= 2 * 96  # at least 96 pixels per image

    # the last checkpoint loads back in one call, knows its layer and decodes as trained
    last = trainer.checkpoint_callback.last_model_path
    assert not any(k.startswith("head.") for k in torch.load(last, weights_only=True)["state_dict"])
    loaded = DecoderModule.from_checkpoint(last)
    assert loaded.hparams.layer == "layer1"
    assert loaded.hparams.classifier == str(digits_classifier)
    # it says how faithful it is: the PSNR of its last validation, for figures of decoded points
    assert loaded.validation["epoch"] == 1
    assert loaded.validation["psnr"] == pytest.approx(psnr, abs=1e-4)
    images, _ = next(iter(data.val_dataloader()))
    points = module.encode(images[:4])
    assert torch.equal(loaded.encode(images[:4]), points)
    assert torch.allclose(loaded.decode(points), module.decode(points))
    assert module.decoder.training  # decode() restored the mode it found

    # ...but not against another classifier, whose layer1 means something else
    other = _save_classifier(tmp_path / "other.ckpt", "resnet18", (3, 32, 32))
    with pytest.raises(CheckpointError, match="another classifier"):
        DecoderModule.from_checkpoint(last, classifier=str(other))


def test_mean_image_baseline() -> None:
    train = [(torch.zeros(2, 3, 4, 4), None), (torch.ones(2, 3, 4, 4), None)]
    assert mean_image_baseline(train, [torch.ones(5, 3, 4, 4)]) == pytest.approx(0.25)


def test_wrong_layer_and_wrong_files_are_clear_errors(
    digits_classifier: Path, tmp_path: Path
) -> None:
    with pytest.raises(LayerError, match=r"'layer9' is not a layer.*Valid layers: .*layer1"):
        DecoderModule(str(digits_classifier), "layer9")

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        DecoderModule(str(text), "layer1")
    with pytest.raises(CheckpointError, match="No file"):
        DecoderModule(str(tmp_path / "missing.ckpt"), "layer1")

    decoder = DecoderModule(str(digits_classifier), "flatten", width=4)
    decoder_path = tmp_path / "decoder.ckpt"
    torch.save(
        {"state_dict": decoder.state_dict(), "hyper_parameters": dict(decoder.hparams)},
        decoder_path,
    )
    assert DecoderModule.from_checkpoint(decoder_path).hparams.layer == "flatten"
    with pytest.raises(CheckpointError, match="not a ClassifierModule"):
        DecoderModule(str(decoder_path), "layer1")
    with pytest.raises(CheckpointError, match="not a DecoderModule"):
        DecoderModule.from_checkpoint(digits_classifier)

    unfit = _save_classifier(tmp_path / "unfit.ckpt", "resnet18", None)
    with pytest.raises(DecoderError, match="input_shape"):
        DecoderModule(str(unfit), "layer1")
    with pytest.raises(DecoderError, match="architecture='map'"):
        DecoderModule(str(digits_classifier), "flatten", architecture="map")
    with pytest.raises(DecoderError, match=r"\(B, 512\)"):
        decoder.decode(torch.zeros(2, 64, 8, 8))


def test_data_of_another_size_is_a_clear_error(digits_classifier: Path, tmp_path: Path) -> None:
    module = DecoderModule(str(digits_classifier), "layer1", width=4)
    trainer = L.Trainer(fast_dev_run=True, logger=False, default_root_dir=tmp_path)
    with pytest.raises(DecoderError, match=r"\(3, 16, 16\)"):
        trainer.fit(module, DigitsDataModule(size=16))


@pytest.mark.parametrize("config", ["quick_last.yaml", "quick_layer1.yaml"])
def test_quick_decoder_configs_fast_dev_run(
    in_tmp: Path, digits_classifier: Path, config: str
) -> None:
    main(
        [
            "fit",
            "-c",
            str(DECODER_CONFIGS / config),
            "--trainer.fast_dev_run",
            "true",
            "--model.init_args.classifier",
            str(digits_classifier),
        ]
    )


@pytest.mark.parametrize(
    ("config", "layer"),
    [("cifar10_resnet50_layer1.yaml", "layer1"), ("cifar10_resnet50_last.yaml", "flatten")],
)
def test_paper_decoder_configs_parse(
    config: str, layer: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(DECODER_CONFIGS / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"layer: {layer}" in printed and "resize: 224" in printed


def test_cli_prints_a_wrong_layer_without_traceback(
    in_tmp: Path, digits_classifier: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--model.init_args.classifier", str(digits_classifier)]
    args += ["--model.init_args.layer", "layer9", "--trainer.logger", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(DECODER_CONFIGS / "quick_last.yaml"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Valid layers" in err and "Traceback" not in err


def test_a_runs_decoders_load_with_its_classifier_and_their_own_layer(
    digits_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = DecoderModule(str(digits_classifier), "flatten", width=4)
    hparams = {**dict(decoder.hparams), "classifier": "lightning_logs/quickstart/classifier.ckpt"}
    path = tmp_path / "decoder.ckpt"
    torch.save({"state_dict": decoder.state_dict(), "hyper_parameters": hparams}, path)
    monkeypatch.chdir(tmp_path)  # the saved relative path leads nowhere from here
    with pytest.raises(CheckpointError, match="No file"):
        DecoderModule.from_checkpoint(path)
    # The run's classifier stands in for the path saved in the decoder.
    loaded = load_decoders({"flatten": str(path)}, str(digits_classifier))
    assert loaded["flatten"].hparams.layer == "flatten"
    # A decoder of one layer given for another: refused by name, before any work or folder.
    with pytest.raises(
        ConnectivityError,
        match=r"maps layer 'flatten' .* given for 'layer1'; give it as decoders\.flatten",
    ):
        load_decoders({"layer1": str(path)}, str(digits_classifier))
    experiment = Experiment(
        classifier=str(digits_classifier),
        name="run",
        spaces=["layer1"],
        decoders={"layer1": str(path)},
        output_dir=str(tmp_path / "runs"),
    )
    with pytest.raises(ConnectivityError, match="given for 'layer1'"):
        run_paths(experiment, DigitsDataModule())
    # A typo of a decoder beside it is named, as a classifier's is.
    typo = dataclasses.replace(experiment, decoders={"layer1": str(tmp_path / "decodr.ckpt")})
    with pytest.raises(
        CheckpointError, match=r"decodr\.ckpt \(for 'layer1'\)\. Did you mean .*/decoder\.ckpt\?"
    ):
        run_paths(typo, DigitsDataModule())
    assert not (tmp_path / "runs").exists()
