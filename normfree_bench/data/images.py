"""Images for the ViT task: scikit-learn's bundled digits (offline), or CIFAR-10 / an ImageFolder on disk.

Usage: ``data = load_images(DataConfig(dataset="digits"), ModelConfig(task="vit"))``; ``data.train``

- ``digits`` (default): the 1,797 real 8x8 grey images of ``sklearn.datasets.load_digits``, shipped
  inside scikit-learn, split 80/20 with a fixed stratified split (``random_state=0``).
- ``cifar10``: torchvision's CIFAR10 read from ``data.root`` (``cifar-10-batches-py/`` inside it);
  it is downloaded only with ``data.download: true`` and a network that allows it.
- ``imagefolder``: ``data.root/train/<class>/*.png`` and ``data.root/val/<class>/*.png``, read as
  grey when ``model.in_chans`` is 1, else RGB.

Pixels are scaled to [0, 1] and standardised with the training split's per-channel mean and std.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset
from torchvision.datasets import CIFAR10, ImageFolder

from normfree_bench.config import DataConfig, ModelConfig
from normfree_bench.errors import UserError

DATASETS = ("digits", "cifar10", "imagefolder")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ImageData:
    train: Batch  # images (N, C, H, W) float32, labels (N,) int64
    val: Batch
    num_classes: int
    source: str

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (*self.train, *self.val):
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def _digits(cfg: DataConfig, model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    # Imported here: scikit-learn adds seconds to every start of the command line, and only this
    # dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    x_tr, x_va, y_tr, y_va = train_test_split(images, digits.target, test_size=0.2, stratify=digits.target,
                                              random_state=0)
    return x_tr, y_tr, x_va, y_va, "scikit-learn load_digits (1,797 8x8 images), stratified 80/20 split"


def _torchvision(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for image, label in dataset:  # type: ignore[attr-defined]
        xs.append(np.asarray(image, dtype=np.float32) / 255.0)
        ys.append(label)
    x = np.stack(xs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(ys)


def _cifar10(cfg: DataConfig, model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    root = Path(cfg.root or "data")
    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        val = CIFAR10(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise UserError(f"CIFAR-10 not found under {root}: put the extracted cifar-10-batches-py/ folder there "
                        "(python version from https://www.cs.toronto.edu/~kriz/cifar.html), or set "
                        "data.download: true where the network allows it") from exc
    except OSError as exc:
        raise UserError(f"CIFAR-10 could not be downloaded to {root} ({exc}); download it elsewhere and put "
                        f"cifar-10-batches-py/ under {root}") from exc
    return (*_torchvision(train), *_torchvision(val), f"CIFAR-10 from {root}")


def _imagefolder(cfg: DataConfig, model: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    root = Path(cfg.root)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise UserError(f"data.root {root} must hold train/<class>/ and val/<class>/ image folders")
    mode = "L" if model.in_chans == 1 else "RGB"

    def load(path: str) -> Image.Image:
        with Image.open(path) as image:
            return image.convert(mode)

    try:
        train, val = ImageFolder(str(root / "train"), loader=load), ImageFolder(str(root / "val"), loader=load)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"cannot read the image folders under {root}: {exc}") from exc
    return (*_torchvision(train), *_torchvision(val), f"ImageFolder {root}")


def load_images(cfg: DataConfig, model: ModelConfig) -> ImageData:
    """The dataset named by ``cfg.dataset``, checked against the model's image size, channels, classes."""
    loaders = {"digits": _digits, "cifar10": _cifar10, "imagefolder": _imagefolder}
    if cfg.dataset not in loaders:
        raise UserError(f"unknown data.dataset '{cfg.dataset}'; valid: {', '.join(DATASETS)}")
    x_tr, y_tr, x_va, y_va, source = loaders[cfg.dataset](cfg, model)
    n_classes = int(max(y_tr.max(), y_va.max())) + 1
    _, chans, height, width = x_tr.shape
    if (chans, height, width) != (model.in_chans, model.image_size, model.image_size):
        raise UserError(f"{cfg.dataset} images are {chans}x{height}x{width}; set model.in_chans: {chans} and "
                        f"model.image_size: {height} (got {model.in_chans}x{model.image_size}x{model.image_size})")
    if n_classes != model.num_classes:
        raise UserError(f"{cfg.dataset} has {n_classes} classes; set model.num_classes: {n_classes}")
    mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)
    std = x_tr.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def tensors(x: np.ndarray, y: np.ndarray) -> Batch:
        return torch.from_numpy((x - mean) / std).float(), torch.from_numpy(y).long()

    return ImageData(tensors(x_tr, y_tr), tensors(x_va, y_va), n_classes, source)


class TrainImages(IterableDataset):
    """Endless seeded random batches of (images, labels); use with ``DataLoader(..., batch_size=None)``."""

    def __init__(self, data: Batch, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.images, self.labels = data
        self.batch_size = min(batch_size, len(self.labels))
        self.seed = seed

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            idx = torch.randint(0, len(self.labels), (self.batch_size,), generator=gen)
            yield self.images[idx], self.labels[idx]


def val_image_batches(data: Batch, batch_size: int) -> list[Batch]:
    """The whole validation split in fixed order, in batches."""
    images, labels = data
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]
