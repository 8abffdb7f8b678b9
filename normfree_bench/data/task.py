"""The data of a run, whichever the task: load it once, fingerprint it, batch it.

Usage: ``data = load_data(cfg); train_loader, val_loader = loaders(cfg, data)``
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from normfree_bench.config import RunConfig
from normfree_bench.data.images import ImageData, TrainImages, load_images, val_image_batches
from normfree_bench.data.text import Corpus, TrainWindows, check_split_size, load_corpus, val_batches

TaskData = Corpus | ImageData


def load_data(cfg: RunConfig) -> TaskData:
    """The run's data, checked: the text corpus for the LM, the images for the ViT."""
    if cfg.model.task == "vit":
        return load_images(cfg.data, cfg.model)
    corpus = load_corpus(cfg.data)
    for split in ("train", "val"):
        check_split_size(len(getattr(corpus, split)), cfg.model.context_length, split)
    return corpus


def data_identity(data: TaskData) -> tuple[str, str]:
    """(fingerprint, description) of the data, for provenance and for workers to compare."""
    if isinstance(data, ImageData):
        return data.fingerprint, data.source
    return data.sha256, data.meta.get("source", {}).get("description", "")


def loaders(cfg: RunConfig, data: TaskData) -> tuple[DataLoader, DataLoader]:
    """(endless seeded training batches, fixed validation batches)."""
    bs, seed = cfg.data.batch_size, cfg.train.seed
    if isinstance(data, ImageData):
        return (DataLoader(TrainImages(data.train, bs, seed=seed), batch_size=None),
                DataLoader(val_image_batches(data.val, bs), batch_size=None))
    context = cfg.model.context_length
    return (DataLoader(TrainWindows(data.train, context, bs, seed=seed), batch_size=None),
            DataLoader(val_batches(data, context, cfg.data), batch_size=None))
