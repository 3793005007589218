"""Image datamodules. All yield ``(image, label)`` with images as float tensors in [0, 1].

Normalisation belongs to the model, so the input space of every path is pixel space.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import datasets, transforms

from connectivity.errors import ConnectivityError

SPLITS = ("train", "val", "test")
# Settings that change how fast (or whether) data comes, never which images: left out of a
# run's manifest.
LOADING_ONLY = frozenset({"batch_size", "num_workers", "download"})


class DataNotFoundError(ConnectivityError, FileNotFoundError):
    """The data is not where it was looked for; the message says how to get it."""


class DataConfigError(ConnectivityError, AttributeError):
    """A datamodule whose settings cannot be read back (so a run cannot record them)."""


class ImageDataModule(L.LightningDataModule):
    """Common part: a seeded train/val split, loaders, and what the data looks like.

    Subclasses implement ``_load`` returning ``(train_and_val, test)`` datasets.

    Args:
        batch_size: Samples per batch for every loader.
        num_workers: Loader worker processes (0 loads in the main process).
        val_fraction: Fraction of the training set held out for validation.
        seed: Seed of the train/val split, so every run sees the same split.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self._splits: dict[str, Dataset] = {}
        self.class_names: list[str] = []

    def _load(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def data_config(self) -> dict[str, Any]:
        """The ``__init__`` arguments that decide which images come, by name.

        Read from the attributes named like the arguments (every datamodule here keeps them
        so), else from ``self.hparams``; batch size, workers and ``download`` are left out,
        since they do not change which images come. A path experiment records this, so a
        rerun with other data (another ``resize``, ``size`` or root) is a different experiment.

        Raises:
            DataConfigError: A subclass keeps one of its arguments neither as an attribute of
                the same name nor in ``hparams``.
        """
        config: dict[str, Any] = {}
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or name in LOADING_ONLY:
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if hasattr(self, name):
                value = getattr(self, name)
            elif name in self.hparams:
                value = self.hparams[name]
            else:
                raise DataConfigError(
                    f"{type(self).__name__} keeps its argument {name!r} neither as self.{name} "
                    "nor in self.hparams; store it (or call self.save_hyperparameters()) so a "
                    "path experiment can record which data it ran on"
                )
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        train_and_val, test = self._load()
        n_val = max(1, round(self.val_fraction * len(train_and_val)))  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed)
        train, val = random_split(
            train_and_val,
            [len(train_and_val) - n_val, n_val],  # type: ignore[arg-type]
            generator=generator,
        )
        self._splits = {"train": train, "val": val, "test": test}

    def dataset(self, split: str) -> Dataset:
        """The dataset of one split (``train``, ``val`` or ``test``), set up on first use."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.setup()
        return self._splits[split]

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        image, _ = self.dataset("test")[0]
        return tuple(image.shape)  # type: ignore[return-value]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _seeded_split(
    size: int, fraction: float, seed: int, at_least: int
) -> tuple[list[int], list[int]]:
    """Indices ``(kept, held_out)`` of ``range(size)``: a seeded shuffle, ``fraction`` of it
    (rounded, at least ``at_least``) held out. The same seed gives the same split on every
    machine, so a run folder's pairs name the same images wherever it resumes."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(at_least, round(fraction * size))
    return order[held:], order[:held]


def _image_transform(resize: int | None) -> transforms.Compose:
    steps: list = [transforms.ToTensor()]
    if resize is not None:
        steps.append(transforms.Resize((resize, resize), antialias=True))
    return transforms.Compose(steps)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits: 1,797 real 8x8 images of 10 classes, no download.

    Upscaled (bilinear) to ``size`` x ``size`` and repeated to 3 channels so that image
    classifiers built for RGB take them as they are. Test set: a fixed seeded ``test_fraction``.

    Args:
        size: Side of the upscaled images.
        test_fraction: Fraction of all images held out as the test set.
        batch_size: See :class:`ImageDataModule`.
        num_workers: See :class:`ImageDataModule`.
        val_fraction: See :class:`ImageDataModule` (a fraction of what is left after test).
        seed: Seed of both the test and the validation split.
    """

    def __init__(
        self,
        size: int = 32,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, seed)
        self.size = size
        self.test_fraction = test_fraction

    def _load(self) -> tuple[Dataset, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear")
        images = images.clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        self.class_names = [str(name) for name in digits.target_names]
        rest, test = _seeded_split(len(labels), self.test_fraction, self.seed, at_least=0)
        return TensorDataset(images[rest], labels[rest]), TensorDataset(images[test], labels[test])


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 through torchvision.

    Args:
        data_dir: Folder holding (or receiving) ``cifar-10-batches-py``.
        download: Download the data if it is missing (needs internet).
        resize: Side to resize images to (224 for the paper's ResNet50); None keeps 32.
        batch_size: See :class:`ImageDataModule`.
        num_workers: See :class:`ImageDataModule`.
        val_fraction: See :class:`ImageDataModule`.
        seed: See :class:`ImageDataModule`.
    """

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        download: bool = False,
        resize: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, seed)
        self.data_dir = data_dir
        self.download = download
        self.resize = resize

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                datasets.CIFAR10(self.data_dir, train=train, download=True)

    def _load(self) -> tuple[Dataset, Dataset]:
        transform = _image_transform(self.resize)
        try:
            train = datasets.CIFAR10(self.data_dir, train=True, transform=transform)
            test = datasets.CIFAR10(self.data_dir, train=False, transform=transform)
        except RuntimeError as error:
            raise DataNotFoundError(
                f"CIFAR-10 was not found in {Path(self.data_dir).resolve()}. Set "
                "`data.init_args.download: true` to download it (needs internet), or point "
                "`data.init_args.data_dir` at a folder holding cifar-10-batches-py."
            ) from error
        self.class_names = list(train.classes)
        return train, test


class ImageFolderDataModule(ImageDataModule):
    """Any folder in ImageFolder layout, ``<root>/<class>/*.png|jpg``.

    Args:
        train_root: Folder of training images (validation is split off it).
        test_root: Folder of test images with the same classes; None splits ``test_fraction``
            off ``train_root`` instead.
        test_fraction: Used only without ``test_root``.
        resize: Side to resize images to; None keeps them as they are (they must then share
            one size to be batched).
        batch_size: See :class:`ImageDataModule`.
        num_workers: See :class:`ImageDataModule`.
        val_fraction: See :class:`ImageDataModule`.
        seed: Seed of the splits.
    """

    def __init__(
        self,
        train_root: str,
        test_root: str | None = None,
        test_fraction: float = 0.1,
        resize: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, val_fraction, seed)
        self.train_root = train_root
        self.test_root = test_root
        self.test_fraction = test_fraction
        self.resize = resize

    def _folder(self, root: str) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(root, transform=_image_transform(self.resize))
        except (FileNotFoundError, OSError) as error:
            raise DataNotFoundError(
                f"No images found in {Path(root).resolve()}: expected the ImageFolder layout "
                f"<root>/<class>/<image>.png|jpg ({error})"
            ) from error

    def _load(self) -> tuple[Dataset, Dataset]:
        train = self._folder(self.train_root)
        self.class_names = list(train.classes)
        if self.test_root is not None:
            test = self._folder(self.test_root)
            if test.classes != train.classes:
                raise ValueError(
                    f"Classes differ between {self.train_root} ({train.classes}) and "
                    f"{self.test_root} ({test.classes})"
                )
            return train, test
        rest, test = _seeded_split(len(train), self.test_fraction, self.seed, at_least=1)
        return Subset(train, rest), Subset(train, test)


def stack_images(dataset: Dataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    """Images ``(n, C, H, W)`` and labels ``(n,)`` of the given dataset indices."""
    items = [dataset[i] for i in indices]
    images = torch.stack([image for image, _ in items])
    labels = torch.as_tensor([int(label) for _, label in items], dtype=torch.long)
    return images, labels
