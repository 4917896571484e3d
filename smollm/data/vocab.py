"""Tokenizers by name: the SmolLM2 tokenizer, or a small byte-level BPE trained on a corpus' train split."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from smollm import assets
from smollm.config import SmolError
from smollm.tokenizer import ENDOFTEXT, from_dir, load_tokenizer


def tokenizer_identity(name: str) -> str:
    """Cache-key part for a tokenizer name: "bpe-8k" -> "bpe-8192"; a tokenizer directory (a
    run's tokenizer/) -> "dir-" + its tokenizer.json's digest, since a path is not what it holds."""
    size = bpe_size(name)
    if size:
        return f"bpe-{size}"
    vocab = Path(name) / "tokenizer.json"
    if name != "smollm2" and vocab.is_file():
        import hashlib

        return "dir-" + hashlib.sha256(vocab.read_bytes()).hexdigest()[:12]
    return name


def bpe_size(name: str) -> int | None:
    m = re.fullmatch(r"bpe-(\d+)(k?)", name)
    if not m:
        return None
    size = int(m.group(1)) * (1024 if m.group(2) else 1)
    if not 256 < size <= 65536:
        raise SmolError(f"tokenizer {name!r}: BPE vocabulary must be in (256, 65536]")
    return size


def corpus_tokenizer(name: str, train_texts: Iterable[str] | None = None, key: str = ""):
    """The tokenizer called `name`; a `bpe-N` one is trained on `train_texts` once and cached under `key`."""
    size = bpe_size(name)
    if size is None:
        if name != "smollm2" and not Path(name).is_dir():
            raise SmolError(
                f"unknown tokenizer {name!r}: use smollm2, bpe-<size> (e.g. bpe-8k) or a tokenizer dir"
            )
        return load_tokenizer(name)

    target = assets.cache_root() / "tokenizers" / f"bpe-{size}-{key}"
    if not (target / "tokenizer.json").is_file():
        if train_texts is None:
            raise SmolError(f"tokenizer {name!r} is not trained yet for this corpus")
        _train_bpe(train_texts, size, target)
    return from_dir(target)


def _train_bpe(texts: Iterable[str], size: int, target: Path) -> None:
    """Byte-level BPE with <|endoftext|> as id 0, like SmolLM2's; written atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=ENDOFTEXT, bos_token=ENDOFTEXT, unk_token=ENDOFTEXT
    )
    fast.model_max_length = 1 << 30
    with assets.atomic_dir(target) as tmp:
        fast.save_pretrained(tmp)


def endoftext_id(tokenizer) -> int:
    tid = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    if tid is None or tid == tokenizer.unk_token_id and ENDOFTEXT not in tokenizer.get_vocab():
        raise SmolError(f"tokenizer has no {ENDOFTEXT} token to separate documents")
    return int(tid)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, through the Rust tokenizer directly (its threads use every core)."""
    return [
        e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the character each byte is written as in a byte-level vocab."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens), to turn nats into bits per byte."""
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids) | {int(i) for i in tokenizer.added_tokens_decoder}
    out = np.zeros(len(tokenizer), dtype=np.int32)
    for token, tid in tokenizer.get_vocab().items():
        if tid in special or tid >= len(out):
            continue
        byte_level = all(ch in decoder for ch in token)
        out[tid] = (
            len(token) if byte_level else len(token.encode())
        )  # one char per byte in byte-level vocabs
    return out
