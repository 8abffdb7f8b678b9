"""The data of a run, whichever the task: load it once, fingerprint it, batch it.

Usage: ``data = load_data(cfg); train_loader, val_loader = loaders(cfg, data)``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from normfree_bench.config import DataConfig, ModelConfig, RunConfig
from normfree_bench.data.bpe import tokenize
from normfree_bench.data.hf import hf_path, load_hf_corpus
from normfree_bench.data.images import ImageData, TrainImages, load_images, val_image_batches
from normfree_bench.data.text import Corpus, TrainWindows, check_split_size, load_corpus, val_batches
from normfree_bench.data.tokens import holds_token_files, load_token_files
from normfree_bench.errors import UserError

TaskData = Corpus | ImageData


def load_data(cfg: RunConfig) -> TaskData:
    """The run's data, checked against the model: the text corpus for the LM, the images for the ViT."""
    if cfg.model.task == "vit":
        return load_images(cfg.data, cfg.model)
    corpus = load_lm_corpus(cfg.data)
    check_fits(corpus, cfg.model)
    return corpus


def load_lm_corpus(data: DataConfig) -> Corpus:
    """Token files (a folder with nanoGPT's train.bin and val.bin, `data.vocab_size` ids), or a text corpus (the
    stdlib, a file or folder, or ``hf:<saved dataset>``, normfree_bench.data.hf) as bytes or through
    ``data.tokenizer`` (normfree_bench.data.bpe)."""
    path = Path(data.corpus).expanduser()
    if data.corpus != "stdlib" and path.is_dir() and holds_token_files(path):
        if data.tokenizer != "bytes":
            raise UserError(f"corpus folder {data.corpus} holds token files, already tokenized; data.tokenizer "
                            f"{data.tokenizer!r} applies to text corpora; valid here: bytes")
        if data.vocab_size is None:
            raise UserError(f"corpus folder {data.corpus} holds token files (train.bin, val.bin); set "
                            "data.vocab_size to their tokenizer's vocabulary size")
        return load_token_files(path, data.vocab_size)
    if data.vocab_size is not None:
        raise UserError(f"data.vocab_size applies to token files (a folder with train.bin and val.bin), and "
                        f"corpus {data.corpus} is text (its vocabulary comes from data.tokenizer); leave "
                        "data.vocab_size out")
    if hf_path(data.corpus) is not None:
        return tokenize(load_hf_corpus(data), data.tokenizer)
    return tokenize(load_corpus(data), data.tokenizer)


def check_fits(data: TaskData, model: ModelConfig) -> None:
    """Refuse a model the data cannot feed: a vocabulary smaller than the corpus's symbols, a context
    longer than a split, images of another shape or class count (`UserError`, before any training)."""
    if isinstance(data, ImageData):
        _, chans, height, width = data.train[0].shape
        if (chans, height, width) != (model.in_chans, model.image_size, model.image_size) \
                or data.num_classes != model.num_classes:
            raise UserError(f"the images are {chans}x{height}x{width} in {data.num_classes} classes; a model with "
                            f"in_chans {model.in_chans}, image_size {model.image_size} and num_classes "
                            f"{model.num_classes} cannot read them")
        return
    if model.vocab_size < data.vocab_size:
        kind = "token ids (data.vocab_size)" if data.meta.get("vocab_size") else "symbols (byte-level)"
        raise UserError(f"model.vocab_size is {model.vocab_size}, but the corpus has {data.vocab_size} {kind}; "
                        f"valid: model.vocab_size >= {data.vocab_size}")
    for split in ("train", "val"):
        check_split_size(len(getattr(data, split)), model.context_length, split)


def trivial_loss(data: TaskData) -> float:
    """The validation loss (nats) of the best constant predictor: the training split's byte frequencies
    for the LM (a unigram model), its class frequencies for the ViT, add-one smoothed, scored by
    cross-entropy on the validation split. A scheme whose best loss is not clearly below it learned
    nothing a frequency table would not (the leaderboard's ``failed: no learning``)."""
    if isinstance(data, ImageData):
        n = data.num_classes
        train, val = data.train[1].numpy(), data.val[1].numpy()
    else:
        n = data.vocab_size
        train, val = np.asarray(data.train), np.asarray(data.val)
    counts = np.bincount(train, minlength=n).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    val_counts = np.bincount(val, minlength=n).astype(np.float64)
    return float(-(val_counts * log_p).sum() / val_counts.sum())


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
