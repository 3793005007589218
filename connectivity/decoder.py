"""Decoders from a layer's representations back to images (the paper's Appendix A, Tables 2-4).

A :class:`DecoderModule` splits a trained classifier at a named layer, keeps the head (input ->
layer) frozen to encode each batch, and trains a decoder (layer -> image in [0, 1]) with MSE.
Vectors get the last-layer design of Table 3, spatial maps the first-hidden-layer design of
Table 2 with upsampling stages added; docs/training.md lists every deviation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio

from connectivity.checkpoints import CheckpointError, best_and_last, load_lightning_module
from connectivity.classifier import ClassifierModule
from connectivity.engine.split import Frozen, layer_shape, split
from connectivity.errors import ConnectivityError
from connectivity.reporting.figures import figure_array, figure_png, reconstruction_figure
from connectivity.reporting.wandb_log import log_image, run_folder
from connectivity.store.files import atomic_write_bytes

Architecture = Literal["auto", "vector", "map"]

# Table 3 reshapes the 2048-vector of ResNet50 to 128x4x4 and upsamples it three times to 32x32.
SEED_SHAPE = (128, 4, 4)
GRID_IMAGES = 8


class DecoderError(ConnectivityError, ValueError):
    """A decoder that cannot be built or used as asked; the message says what to change."""


def _conv_stage(
    in_channels: int, width: int, activation: type[nn.Module], **kwargs: Any
) -> list[nn.Module]:
    """Three [ConvTranspose2d 3x3 pad 1, activation, BatchNorm2d] blocks, as in Tables 2 and 3."""
    layers: list[nn.Module] = []
    for i in range(3):
        layers += [
            nn.ConvTranspose2d(in_channels if i == 0 else width, width, 3, padding=1),
            activation(**kwargs),
            nn.BatchNorm2d(width),
        ]
    return layers


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    # Bilinear weights are convex, so images stay in [0, 1].
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


class VectorDecoder(nn.Module):
    """Table 3 (the last layer): a vector -> 128x4x4 -> three 2x upsamplings -> 32x32 image.

    Args:
        in_features: Length of the (flattened) layer point; 2048 is reshaped as in the paper,
            any other length first goes through a Linear layer to 2048 (a deviation).
        image_shape: ``(C, H, W)`` of the images; a bilinear resize maps 32x32 to ``(H, W)``.
        width: Channels of the later stages (256 in the paper); the first stage has twice this.
    """

    def __init__(self, in_features: int, image_shape: tuple[int, int, int], width: int = 256):
        super().__init__()
        seed = SEED_SHAPE[0] * SEED_SHAPE[1] * SEED_SHAPE[2]
        self.project = nn.Identity() if in_features == seed else nn.Linear(in_features, seed)
        # Keras' LeakyReLU default, alpha=0.3, as the paper's table names it.
        layers = _conv_stage(SEED_SHAPE[0], 2 * width, nn.LeakyReLU, negative_slope=0.3)
        for stage in range(3):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            in_channels = 2 * width if stage == 0 else width
            layers += _conv_stage(in_channels, width, nn.LeakyReLU, negative_slope=0.3)
        layers += [nn.Conv2d(width, image_shape[0], 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.size = (image_shape[1], image_shape[2])

    def forward(self, points: Tensor) -> Tensor:
        seeds = self.project(points.flatten(1)).view(-1, *SEED_SHAPE)
        return _resize(self.body(seeds), self.size)


def upsampling_stages(map_size: tuple[int, int], image_size: tuple[int, int]) -> int:
    """How many 2x upsamplings take a ``map_size`` map to at least ``image_size``."""
    stages = 0
    while any(m * 2**stages < s for m, s in zip(map_size, image_size, strict=True)):
        stages += 1
    return stages


class MapDecoder(nn.Module):
    """Table 2 (the first hidden layer) for a ``(C, H, W)`` map, upsampled to the image size.

    Table 2's body runs at the map's resolution with the 5x5 transposed convolutions padded to
    keep the size; a nearest 2x upsampling precedes each of the last ``n`` three-block stages
    (as Table 3 does), where ``n`` upsamplings reach the image size (stages are added when
    ``n`` exceeds Table 2's two); Table 3's output layer (3x3 conv to the image channels,
    sigmoid) ends it, and a bilinear resize fixes sizes that are not a power of two apart.

    Args:
        map_shape: ``(C, H, W)`` of a layer point.
        image_shape: ``(C, H, W)`` of the images.
        width: Channels of every hidden layer (256 in the paper).
    """

    def __init__(
        self, map_shape: tuple[int, int, int], image_shape: tuple[int, int, int], width: int = 256
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = map_shape[0]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(channels, width, 5, padding=2),
                nn.ReLU(),
                nn.BatchNorm2d(width),
                nn.ConvTranspose2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(width),
                nn.ConvTranspose2d(width, width, 3, padding=1),
            ]
            channels = width
        self.size = (image_shape[1], image_shape[2])
        upsamplings = upsampling_stages((map_shape[1], map_shape[2]), self.size)
        stages = max(2, upsamplings)
        for stage in range(stages):
            if stage >= stages - upsamplings:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += _conv_stage(width, width, nn.ReLU)
        layers += [nn.Conv2d(width, image_shape[0], 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, points: Tensor) -> Tensor:
        return _resize(self.body(points), self.size)


def is_map(shape: tuple[int, ...]) -> bool:
    """Whether a layer point of this shape is a spatial map; (C, 1, 1) counts as a vector."""
    return len(shape) == 3 and shape[1] * shape[2] > 1


def build_decoder(
    point_shape: tuple[int, ...],
    image_shape: tuple[int, int, int],
    width: int = 256,
    architecture: Architecture = "auto",
) -> nn.Module:
    """The decoder for layer points of ``point_shape`` (no batch dimension).

    Args:
        point_shape: Shape of one layer point, e.g. ``(2048,)`` or ``(256, 56, 56)``.
        image_shape: ``(C, H, W)`` of the images to produce.
        width: Hidden channels (256 in the paper).
        architecture: ``vector`` (Table 3; maps are flattened), ``map`` (Table 2; needs a
            ``(C, H, W)`` point) or ``auto``: ``map`` for spatial maps, else ``vector``.
    """
    if architecture == "auto":
        architecture = "map" if is_map(point_shape) else "vector"
    if architecture == "vector":
        return VectorDecoder(int(torch.Size(point_shape).numel()), image_shape, width)
    if architecture == "map":
        if len(point_shape) != 3:
            raise DecoderError(
                f"architecture='map' needs (C, H, W) layer points, but they have shape "
                f"{tuple(point_shape)}; use architecture 'vector' or 'auto'"
            )
        return MapDecoder(tuple(point_shape), image_shape, width)  # type: ignore[arg-type]
    raise DecoderError(f"architecture must be 'auto', 'vector' or 'map', got {architecture!r}")


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _digest(module: nn.Module) -> Tensor:
    """SHA-256 of a module's weights and buffers as 32 bytes, to recognise a classifier."""
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        sha.update(raw.numpy().tobytes())
    return torch.tensor(list(sha.digest()), dtype=torch.uint8)


@torch.no_grad()
def mean_image_baseline(train: Iterable[Any], evaluate: Iterable[Any]) -> float:
    """MSE of predicting the mean training image for every image: what a decoder must beat.

    Args:
        train: Batches (``(images, labels)`` or images) whose mean image is the prediction.
        evaluate: Batches on which the MSE is measured, e.g. a validation loader.
    """
    total: Tensor | None = None
    count = 0
    for batch in train:
        images = _images(batch).double()
        total = images.sum(0) if total is None else total + images.sum(0)
        count += len(images)
    if total is None:
        raise DecoderError("mean_image_baseline got no training images")
    mean = total / count
    squared, elements = 0.0, 0
    for batch in evaluate:
        images = _images(batch).double()
        squared += float((images - mean).pow(2).sum())
        elements += images.numel()
    if elements == 0:
        raise DecoderError("mean_image_baseline got no images to evaluate on")
    return squared / elements


def validation_note(validation: dict[str, float]) -> str:
    """``"epoch 4, validation PSNR 21.3 dB"`` from a decoder's saved validation summary."""
    if "psnr" not in validation:
        return "validation PSNR not recorded"
    return f"epoch {int(validation['epoch'])}, validation PSNR {validation['psnr']:.1f} dB"


class DecoderModule(L.LightningModule):
    """A decoder from one layer of a trained classifier back to images, trained with MSE.

    The classifier is split at ``layer``; its head encodes each batch (frozen, always in eval
    mode, without gradients) and only the decoder learns. Checkpoints hold the decoder and a
    digest of the head, not the head itself: the head is read from ``classifier`` again when
    loading, and loading fails if those weights changed since training.

    Args:
        classifier: Path of a :class:`~connectivity.classifier.ClassifierModule` checkpoint.
        layer: Layer to decode, as :func:`connectivity.engine.split.split` names it.
        lr: Adam learning rate.
        width: Hidden channels of the decoder (256 in the paper; smaller is faster).
        architecture: ``auto`` (``map`` for spatial maps, else ``vector``), ``vector``
            (Table 3) or ``map`` (Table 2); see :func:`build_decoder`.
        input_shape: ``(C, H, W)`` of the images; by default the one the classifier was fit on.
    """

    def __init__(
        self,
        classifier: str,
        layer: str,
        lr: float = 1e-3,
        width: int = 256,
        architecture: Architecture = "auto",
        input_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            # As ClassifierModule.from_checkpoint does, but with the hparams read from the file:
            # under LightningCLI the nested module's own .hparams are the decoder's config.
            trained, saved = load_lightning_module(ClassifierModule, classifier, weights=None)
        except CheckpointError as error:
            raise CheckpointError(f"classifier={classifier!r}: {error}") from error
        shape = input_shape if input_shape is not None else saved.get("input_shape")
        if shape is None:
            raise DecoderError(
                f"{classifier} does not record the input shape its classifier was fit on; set "
                "input_shape (model.init_args.input_shape: [3, 32, 32] in a config)"
            )
        if len(shape) != 3:
            raise DecoderError(f"input_shape must be (C, H, W), got {tuple(shape)}")
        self.input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        # Recorded resolved, so the decoder's checkpoint says which images it makes.
        self.hparams.input_shape = self.input_shape
        head, _ = split(trained.network, layer)  # the tail is not needed and is not kept
        # Frozen keeps the head frozen and in eval mode under a parent's .train().
        self.head = Frozen(head)
        self.layer_shape = layer_shape(self.head, self.input_shape)
        self.decoder = build_decoder(self.layer_shape, self.input_shape, width, architecture)
        self.register_buffer("classifier_digest", _digest(self.head))
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("val", "test")
                for name, metric in (
                    ("mse", MeanSquaredError()),
                    ("psnr", PeakSignalNoiseRatio(data_range=1.0)),
                )
            }
        )
        self._grid_images: tuple[Tensor, Tensor] | None = None
        # The last validation's epoch, MSE and PSNR (dB), saved in checkpoints so that figures
        # of decoded points can say how faithful the decoder is.
        self.validation: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, classifier: str | None = None) -> DecoderModule:
        """Load a trained decoder (eval mode, on the CPU) in one call.

        Args:
            path: The decoder's ``.ckpt`` file.
            classifier: Where its classifier checkpoint is now, if it moved since training
                (it must hold the same weights up to the layer).
        """
        overrides = {} if classifier is None else {"classifier": str(classifier)}
        module, _ = load_lightning_module(cls, path, **overrides)
        return module

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The head belongs to the classifier checkpoint; the digest ties the decoder to it.
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "") + "head."
        for key in [key for key in state if key.startswith(prefix)]:
            del state[key]
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        saved = state_dict.get("classifier_digest")
        if saved is not None and not torch.equal(saved.cpu(), self.classifier_digest.cpu()):
            raise CheckpointError(
                f"This decoder was trained on another classifier than the one now at "
                f"{self.hparams.classifier}: its weights up to layer {self.hparams.layer!r} "
                "differ. Point `classifier` at the checkpoint the decoder was trained with, or "
                "train the decoder again."
            )
        head = {f"head.{key}": value for key, value in self.head.state_dict().items()}
        return super().load_state_dict({**state_dict, **head}, strict=strict, assign=assign)

    def forward(self, points: Tensor) -> Tensor:
        return self.decoder(points)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Layer points ``(B, *layer_shape)`` of images ``(B, C, H, W)`` in [0, 1]."""
        return self.head(images.to(self.device))

    @torch.no_grad()
    def decode(self, points: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] of layer points ``(B, *layer_shape)``, in eval mode."""
        if tuple(points.shape[1:]) != tuple(self.layer_shape):
            raise DecoderError(
                f"decode takes a batch of {self.hparams.layer!r} points of shape "
                f"(B, {', '.join(map(str, self.layer_shape))}), got {tuple(points.shape)}"
            )
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            return self.decoder(points.to(self.device))
        finally:
            self.decoder.train(was_training)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        shape = getattr(datamodule, "image_shape", None)
        if shape is not None and tuple(shape) != self.input_shape:
            raise DecoderError(
                f"The data has images of shape {tuple(shape)} but the decoder makes "
                f"{self.input_shape} images (the classifier's input); use data of that size "
                "or set model.init_args.input_shape"
            )

    def _reconstruct(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            points = self.head(images)
        return self.decoder(points)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = _images(batch)
        loss = F.mse_loss(self._reconstruct(images), images)
        self.log("train/mse", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
        images = _images(batch)
        reconstructions = self._reconstruct(images)
        for name in ("mse", "psnr"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(reconstructions, images)
            self.log(f"{stage}/{name}", metric, prog_bar=True, on_epoch=True, on_step=False)
        return images, reconstructions

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, reconstructions = self._evaluate(batch, "val")
        if batch_idx == 0:  # the val loader is not shuffled: the same images every epoch
            self._grid_images = (
                images[:GRID_IMAGES].detach().cpu(),
                reconstructions[:GRID_IMAGES].detach().cpu(),
            )

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        pair, self._grid_images = self._grid_images, None
        if pair is None or self.trainer.sanity_checking:
            return
        epoch = self.current_epoch
        # The metrics still hold the whole epoch here (they are reset after this hook).
        self.validation = {
            "epoch": epoch,
            "mse": float(self.metrics["val_mse"].compute()),
            "psnr": float(self.metrics["val_psnr"].compute()),
        }
        if self.trainer.fast_dev_run:  # like checkpoints: a smoke run leaves no files
            return
        title = f"{self.hparams.layer} decoder, {validation_note(self.validation)}"
        figure = reconstruction_figure(*pair, title=title)
        folder = run_folder(self.trainer)
        caption = f"{title}: originals (top), decoded (bottom)"
        log_image(
            self.loggers, "val/reconstructions", figure_array(figure), self.global_step, caption
        )
        if self.trainer.is_global_zero:
            file = folder / "reconstructions" / f"epoch={epoch:03d}.png"
            atomic_write_bytes(file, figure_png(figure))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["validation"] = dict(self.validation)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.validation = dict(checkpoint.get("validation") or {})

    def configure_callbacks(self) -> list[L.Callback]:
        # The module knows which metric makes a decoder "best".
        return [best_and_last("val/mse", "min", digits=5)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.decoder.parameters(), lr=self.hparams.lr)
