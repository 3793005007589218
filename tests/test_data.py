"""Datamodules: shapes, ranges, labels, splits and clear errors for missing data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from connectivity.data import (
    CIFAR10DataModule,
    DataNotFoundError,
    DigitsDataModule,
    ImageFolderDataModule,
)


def _check_batch(images: torch.Tensor, labels: torch.Tensor, shape: tuple, classes: int) -> None:
    assert images.dtype == torch.float32
    assert tuple(images.shape[1:]) == shape
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.dtype == torch.long
    assert labels.min() >= 0 and labels.max() < classes


def test_digits_are_real_upscaled_rgb_images_with_a_fixed_split() -> None:
    dm = DigitsDataModule(batch_size=32)
    assert dm.num_classes == 10
    assert dm.image_shape == (3, 32, 32)
    sizes = {split: len(dm.dataset(split)) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    images, labels = next(iter(dm.train_dataloader()))
    _check_batch(images, labels, (3, 32, 32), 10)
    assert torch.equal(images[:, 0], images[:, 1])  # grey digits repeated to three channels
    assert images.amax(dim=(1, 2, 3)).min() > 0.5  # real strokes, not blank images
    again = DigitsDataModule()
    assert torch.equal(again.dataset("test")[5][0], dm.dataset("test")[5][0])
    assert set(torch.stack([y for _, y in dm.dataset("test")]).tolist()) == set(range(10))


def test_digits_size_option() -> None:
    dm = DigitsDataModule(size=16)
    assert dm.image_shape == (3, 16, 16)


def _make_folder(root: Path, classes: list[str], per_class: int, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:04d}.png")


def test_image_folder_with_separate_test_root(tmp_path: Path) -> None:
    _make_folder(tmp_path / "train", ["cat", "dog", "eel"], 10)
    _make_folder(tmp_path / "test", ["cat", "dog", "eel"], 4)
    dm = ImageFolderDataModule(str(tmp_path / "train"), str(tmp_path / "test"), batch_size=8)
    assert dm.class_names == [] and dm.num_classes == 3
    assert dm.class_names == ["cat", "dog", "eel"]
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 30
    assert len(dm.dataset("test")) == 12
    _check_batch(*next(iter(dm.test_dataloader())), (3, 12, 12), 3)


def test_image_folder_split_and_resize(tmp_path: Path) -> None:
    _make_folder(tmp_path / "all", ["a", "b"], 10)
    dm = ImageFolderDataModule(str(tmp_path / "all"), test_fraction=0.2, resize=20)
    assert len(dm.dataset("test")) == 4
    assert dm.image_shape == (3, 20, 20)
    _check_batch(*next(iter(dm.train_dataloader())), (3, 20, 20), 2)


def test_real_cifar10_jpeg_folders(shared_cifar: Path) -> None:
    dm = ImageFolderDataModule(
        str(shared_cifar / "train"), str(shared_cifar / "test"), batch_size=16
    )
    assert dm.num_classes == 10
    assert "cat" in dm.class_names
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 50_000
    assert len(dm.dataset("test")) == 10_000
    _check_batch(*next(iter(dm.val_dataloader())), (3, 32, 32), 10)


def test_missing_cifar10_says_where_and_how(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataNotFoundError, match=r"nowhere.*download: true"):
        dm.setup("fit")


def test_missing_image_folder_says_where(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(str(tmp_path / "absent"))
    with pytest.raises(DataNotFoundError, match="absent"):
        dm.setup("fit")


def test_bad_val_fraction() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5)
