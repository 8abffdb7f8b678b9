"""A subword vocabulary for any text corpus: a byte-level BPE trained locally, or a named ``tokenizer.json``.

Usage: ``corpus = tokenize(load_corpus(cfg), "bpe:8192")``  (``data.tokenizer: bytes | bpe:<vocab> | <tokenizer.json>``)

- ``bpe:<V>``: Hugging Face ``tokenizers``' byte-level BPE (the GPT-2 pre-tokenizer: bytes mapped to 256
  printable symbols, so every input encodes, no unknown token) trained with ``BpeTrainer(vocab_size=V)`` on
  the corpus's **training split only**, so validation text never shapes the vocabulary.
- a path to a ``tokenizer.json``: that tokenizer, as saved by ``tokenizers`` (or ``transformers``' fast
  tokenizers); its vocabulary must fit uint16 ids.

Each split is decoded as UTF-8 (invalid bytes replaced), encoded, and written as nanoGPT-format token
files (flat uint16), then read back through normfree_bench.data.tokens (memory-mapped and checked). The
cache lives next to the byte corpus's: ``<cache>/bpe/<key>/{tokenizer.json, train.bin, val.bin, meta.json}``,
the key hashing the byte corpus's SHA-256 with the vocabulary size (``bpe:V``) or the tokenizer file's
SHA-256; ``meta.json`` is written last and marks a complete entry. The tokenizer file's SHA-256 goes into
the corpus meta (and so into provenance); the corpus fingerprint is the token files', so it covers the
tokenizer too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from normfree_bench.config import MAX_TOKEN_VOCAB, tokenizer_spec
from normfree_bench.data.text import Corpus, cache_root
from normfree_bench.data.tokens import load_token_files
from normfree_bench.errors import UserError
from normfree_bench.io import write_json

FORMAT = 1
TEXT_CHUNK = 1 << 20  # bytes of text per encode/train batch


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text_chunks(split: np.ndarray) -> Iterator[str]:
    """The split's bytes as UTF-8 text, in chunks cut at newlines (invalid bytes replaced)."""
    start, n = 0, len(split)
    while start < n:
        stop = min(n, start + TEXT_CHUNK)
        if stop < n:
            nl = np.flatnonzero(np.asarray(split[stop:stop + 4096]) == ord("\n"))
            stop = stop + int(nl[0]) + 1 if len(nl) else stop
        yield bytes(split[start:stop]).decode("utf-8", errors="replace")
        start = stop


def _train_bpe(train: np.ndarray, vocab: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_text_chunks(train), trainer=trainer)
    return tok


def _encode(tok: object, split: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        for text in _text_chunks(split):
            ids = tok.encode(text).ids  # type: ignore[attr-defined]
            np.asarray(ids, dtype=np.uint16).tofile(fh)
    os.replace(tmp, path)


def tokenize(corpus: Corpus, spec: str) -> Corpus:
    """The byte ``corpus`` as token files under the tokenizer ``spec`` (built once, then read from the cache)."""
    kind, arg = tokenizer_spec(spec)
    if kind == "bytes":
        return corpus
    from tokenizers import Tokenizer

    if kind == "file":
        path = Path(arg)
        try:
            raw = path.read_bytes()
            named = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # OSError, UnicodeDecodeError, or tokenizers' own parse error
            raise UserError(f"data.tokenizer {spec}: cannot read it as a tokenizer.json ({exc}); valid: a file "
                            "saved by the tokenizers library") from None
        if named.get_vocab_size() > MAX_TOKEN_VOCAB:
            raise UserError(f"data.tokenizer {spec} has {named.get_vocab_size()} tokens, more than uint16 ids hold "
                            f"({MAX_TOKEN_VOCAB}); valid: a tokenizer of at most {MAX_TOKEN_VOCAB} tokens")
        key_part = "file:" + _sha256_bytes(raw)
    else:
        key_part = f"bpe:{arg}"
    key = _sha256_bytes(f"{FORMAT}|{corpus.sha256}|{key_part}".encode())[:24]
    entry = cache_root() / "bpe" / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        entry.mkdir(parents=True, exist_ok=True)
        tok = named if kind == "file" else _train_bpe(corpus.train, int(arg))
        tok_path = entry / "tokenizer.json"
        tok.save(str(tok_path))  # type: ignore[attr-defined]
        for split in ("train", "val"):
            _encode(tok, getattr(corpus, split), entry / f"{split}.bin")
        meta = {"format": FORMAT, "tokenizer": spec, "vocab_size": tok.get_vocab_size(),  # type: ignore[attr-defined]
                "tokenizer_sha256": _sha256_bytes(tok_path.read_bytes()), "byte_corpus_sha256": corpus.sha256}
        write_json(meta_path, meta)  # last: its presence marks a complete entry
    meta = json.loads(meta_path.read_text())
    tokens = load_token_files(entry, meta["vocab_size"])
    source = corpus.meta.get("source", {})
    tokens.meta["source"] = {**source, "description": f"{source.get('description', 'text corpus')}, tokenized "
                                                      f"with {spec} ({meta['vocab_size']} tokens)"}
    tokens.meta["tokenizer"] = {**meta, "path": str(entry / "tokenizer.json")}
    return tokens
