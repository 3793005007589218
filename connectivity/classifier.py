"""The image classifier whose input and latent spaces we study."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from connectivity.checkpoints import (
    CheckpointError,
    best_and_last,
    build_lightning_module,
    load_file,
    load_lightning_module,
    load_state,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, so that the model takes pixels in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # Not persistent: a classifier's state dict stays exactly torchvision's.
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@functools.cache
def _normalized_class(base: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``base`` whose forward normalises first (one class per base).

    Instances pickle as their base class plus a swap back (``__reduce_ex__``), so a classifier
    can be saved with ``torch.save`` and sent to spawned processes although this class is made
    at run time.
    """

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        return base.forward(self, self.normalize(x))

    def reduce_ex(self: nn.Module, protocol: int):  # type: ignore[no-untyped-def]
        return _rebuild_normalized, (base, self.__dict__)

    return type(
        f"Normalized{base.__name__}",
        (base,),
        {"forward": forward, "__reduce_ex__": reduce_ex, "_normalized_base": base},
    )


def _rebuild_normalized(base: type[nn.Module], state: dict) -> nn.Module:
    network = base.__new__(base)
    network.__dict__.update(state)
    network.__class__ = _normalized_class(base)
    return network


def with_normalization(network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
    """Make ``network`` normalise its input first, keeping its layer names.

    The network's class is swapped for a subclass whose forward applies a ``normalize``
    submodule and then the original forward, so torch.fx sees ``normalize`` followed by the
    torchvision node names unchanged (``layer1``, ``avgpool``...).

    Raises:
        ValueError: the network normalises its input already (it would normalise twice).
    """
    if hasattr(type(network), "_normalized_base"):
        raise ValueError(
            f"{type(network).__name__} already normalises its input; normalising it again "
            "would change what it computes"
        )
    network.__class__ = _normalized_class(type(network))
    network.normalize = Normalize(mean, std)
    return network


def _replace_last_linear(network: nn.Module, num_classes: int) -> None:
    linears = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network).__name__} has no linear output layer to replace")
    parent_name, _, attr = linears[-1].rpartition(".")
    parent = network.get_submodule(parent_name)
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def build_backbone(name: str, weights: str | None, num_classes: int) -> nn.Module:
    """A torchvision classifier by name with ``num_classes`` outputs.

    Args:
        name: A torchvision model name (``resnet50``, ``resnet18``, ``vgg11_bn``...).
        weights: A torchvision weights enum name (``IMAGENET1K_V2``, ``DEFAULT``), a path to
            a state-dict file for this architecture, or None for random initialisation.
        num_classes: Size of the new final layer.
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"Unknown backbone {name!r}; torchvision offers: {', '.join(available)}")
    enum_names = list(torchvision.models.get_model_weights(name).__members__)
    if weights is None or weights in enum_names:
        network = torchvision.models.get_model(name, weights=weights)
    elif Path(weights).suffix or Path(weights).exists():
        network = torchvision.models.get_model(name, weights=None)
        state = load_file(weights)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(
                f"{weights} is not a state dict of {name}; for a checkpoint of this tool use "
                "ClassifierModule.from_checkpoint"
            )
        load_state(network, state, weights)
    else:
        raise ValueError(
            f"weights={weights!r} is neither a file nor one of {name}'s weights: "
            f"{', '.join(enum_names)} (or null for random initialisation)"
        )
    _replace_last_linear(network, num_classes)
    return network


class ClassifierModule(L.LightningModule):
    """A torchvision classifier finetuned with cross-entropy and Adam.

    Args:
        num_classes: Number of classes of the data.
        backbone: torchvision model name.
        weights: ImageNet weights by torchvision's enum name, a local state-dict file, or None.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        mean: Per-channel mean of the normalisation inside the model (ImageNet's by default).
        std: Per-channel standard deviation of that normalisation.
        input_shape: ``(C, H, W)`` the classifier is trained on; filled in from the
            datamodule when fitting, so decoders and paths know the input space.
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "resnet50",
        weights: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        input_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = with_normalization(
            build_backbone(backbone, weights, num_classes), tuple(mean), tuple(std)
        )
        self.metrics = nn.ModuleDict(
            {
                split: MulticlassAccuracy(num_classes, average="micro")
                for split in ("train_acc", "val_acc", "test_acc")
            }
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ClassifierModule:
        """Load a trained classifier (eval mode, on the CPU) without downloading anything."""
        module, _ = load_lightning_module(cls, path, weights=None)
        return module

    @classmethod
    def untrained_like(cls, path: str | Path) -> ClassifierModule:
        """The architecture of a saved classifier with freshly initialised weights, as its
        constructor draws them from the global random state (no pretrained weights, nothing
        downloaded), in eval mode on the CPU."""
        module, _, _ = build_lightning_module(cls, path, weights=None)
        return module.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        if datamodule.num_classes != self.hparams.num_classes:
            raise ValueError(
                f"The data has {datamodule.num_classes} classes but the model was built with "
                f"num_classes={self.hparams.num_classes}; set model.init_args.num_classes"
            )
        self.hparams.input_shape = tuple(datamodule.image_shape)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metric = self.metrics[f"{split}_acc"]
        metric(logits, labels)
        self.log(f"{split}/loss", loss, prog_bar=split != "test", on_epoch=True, on_step=False)
        self.log(f"{split}/acc", metric, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_callbacks(self) -> list[L.Callback]:
        # The module knows which metric makes a classifier "best".
        return [best_and_last("val/acc", "max", digits=4)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
