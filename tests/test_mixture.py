"""Mixtures of corpora (`data.mixture`): weighted, seeded, resumable draws; schedules; a cache per
source; per-source validation; bad mixtures as one line."""

import contextlib
import io
import json
import sys
import zlib

import numpy as np
import pytest
import torch

from smollm.config import DataConfig, ModelConfig
from smollm.data import evaluate, prepare
from smollm.data import tokencache as cache_mod
from smollm.data.loader import Epochs, gather
from smollm.data.mixture import MixtureLoader, interleaved, sources
from smollm.model import SmolLM

from .conftest import make_docs, write_jsonl


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two distinguishable jsonl corpora: a's documents end 'doc<i>.', b's are upper case."""
    root = tmp_path_factory.mktemp("mix")
    a = write_jsonl(root / "a.jsonl", make_docs(200, seed=1))
    b = write_jsonl(root / "b.jsonl", [d.upper() for d in make_docs(200, seed=2)])
    return str(a), str(b)


def mix(corpora, weights, **kw) -> DataConfig:
    a, b = corpora
    names = {"a": a, "b": b}
    return DataConfig(mixture={names[k]: w for k, w in weights.items()},
                      **{"val_fraction": 0.1, "seq_len": 32, **kw})  # fmt: skip


def drawn(loader: MixtureLoader) -> list[int]:
    return [s.drawn for s in loader.sources.values()]


def test_draws_follow_the_weights_are_seeded_and_resume_bit_for_bit(corpora):
    data, _ = prepare(mix(corpora, {"a": 0.7, "b": 0.3}), progress=False)
    loader = MixtureLoader(data, 32, seed=3)
    for _ in range(400):  # 3,200 blocks: many epochs of each source
        loader.next(8)
    a, b = drawn(loader)
    assert a + b == 3200
    assert abs(a - 0.7 * 3200) < 4 * np.sqrt(3200 * 0.7 * 0.3)  # binomial: within 4 sd
    assert min(loader.epochs_seen().values()) > 1 and loader.epoch >= 1

    again, other = MixtureLoader(data, 32, seed=3), MixtureLoader(data, 32, seed=4)
    x3, x4 = again.next(8)[0], other.next(8)[0]
    assert torch.equal(x3, MixtureLoader(data, 32, seed=3).next(8)[0])
    assert not torch.equal(x3, x4)

    resumed = MixtureLoader(data, 32, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    for _ in range(20):
        xa, ya = loader.next(8)
        xb, _ = resumed.next(8)
        assert torch.equal(xa, xb) and torch.equal(xa[:, 1:], ya[:, :-1])
    assert resumed.epochs_seen() == loader.epochs_seen()


def test_a_source_at_weight_one_is_drawn_in_its_own_shuffled_epochs(corpora):
    a, _ = corpora
    data, _ = prepare(mix(corpora, {"a": 1.0, "b": 0.0}), progress=False)
    loader = MixtureLoader(data, 32, seed=5)
    alone = Epochs(data.caches[a].shards["train"], 32, [5, zlib.crc32(a.encode())])
    for _ in range(30):
        x, _ = loader.next(4)
        assert torch.equal(x, gather(alone.shards, alone.take(4), 32)[0])
    assert drawn(loader)[1] == 0


def test_ranks_take_disjoint_slices_of_one_draw(corpora):
    data, _ = prepare(mix(corpora, {"a": 0.5, "b": 0.5}), progress=False)
    single = MixtureLoader(data, 32, seed=0)
    ranks = [MixtureLoader(data, 32, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        both = torch.cat([r.next(3)[0] for r in ranks])
        assert torch.equal(both, single.next(6)[0])


def test_a_schedule_switches_at_its_step(corpora):
    a, b = corpora
    per_step = 4 * 32  # 4 blocks of 32 tokens
    cfg = mix(corpora, {"a": 0.0, "b": 1.0},
              schedule=[{"until_tokens": 3 * per_step, "weights": {a: 1.0}}])  # fmt: skip
    data, _ = prepare(cfg, progress=False)
    loader = MixtureLoader(data, 32, seed=0)
    counts = []
    for _ in range(6):
        loader.next(4)
        counts.append(drawn(loader))
    assert counts[2] == [12, 0] and counts[5] == [12, 12]  # 3 steps of a, then only b
    assert data.weights_at(3 * per_step - 1) == {a: 1.0} and data.weights_at(3 * per_step)[b] == 1


def test_per_source_bpb_equals_each_source_alone_and_caches_are_shared(corpora, monkeypatch):
    a, b = corpora
    builds = []
    real = cache_mod._build
    monkeypatch.setattr(cache_mod, "_build", lambda c, *r: (builds.append(c.name), real(c, *r)))
    fresh = {"val_fraction": 0.12}  # caches no other test builds
    data, tok = prepare(mix(corpora, {"a": 0.75, "b": 0.25}, **fresh), progress=False)
    torch.manual_seed(0)
    model = SmolLM(ModelConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                               intermediate_size=64, max_seq_len=32))  # fmt: skip
    result = evaluate(model, data, 32, batch_size=8, max_blocks=6)
    for name in (a, b):
        alone, _ = prepare(DataConfig(corpus=name, seq_len=32, **fresh), progress=False)
        assert alone.path == data.caches[name].path  # the very cache the mixture reads
        assert result.sources[name] == evaluate(model, alone, 32, batch_size=8, max_blocks=6)
    assert result.bits_per_byte == pytest.approx(
        0.75 * result.sources[a].bits_per_byte + 0.25 * result.sources[b].bits_per_byte
    )
    # another mixture of the same sources reuses both caches: each was tokenised once
    prepare(mix(corpora, {"a": 0.1, "b": 0.9}, **fresh), progress=False)
    assert sorted(builds) == sorted([a, b])


def test_a_bpe_tokenizer_is_fitted_to_the_mixture_in_proportion(corpora):
    a, b = corpora
    cfg = mix(corpora, {"a": 0.8, "b": 0.2}, tokenizer="bpe-300")
    docs = list(interleaved(sources(cfg), cfg))
    upper = sum(len(d) for d in docs if d.isupper())
    assert upper / sum(len(d) for d in docs) == pytest.approx(0.2, abs=0.02)
    data, tok = prepare(cfg, progress=False)
    single, single_tok = prepare(DataConfig(corpus=a, val_fraction=0.1, seq_len=32,
                                            tokenizer="bpe-300"), progress=False)  # fmt: skip
    assert data.caches[a].path != single.path  # another vocabulary, another cache
    assert tok.get_vocab() != single_tok.get_vocab()


def _cli(monkeypatch, *argv: str):
    from smollm.cli import main

    monkeypatch.setattr(sys, "argv", ["smol", *argv])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, err.getvalue()


@pytest.mark.parametrize(
    ("mixture", "extra", "says"),
    [
        ("{A: -1, B: 1}", [], "data.mixture.A=-1: a weight must be a number >= 0"),
        ("{A: 0, B: 0}", [], "the weights sum to 0"),
        ("{A: 1, no-such-corpus: 1}", [], "unknown corpus 'no-such-corpus'"),
        ("{A: 1, EMPTY: 1}", [], "EMPTY"),
        ("{A: 1, B: 1}", ["data.schedule=[{until_tokens: 500, weights: {A: 1}}, "
                          "{until_tokens: 100, weights: {B: 1}}]"], "the stages' steps go forward"),
    ],
)  # fmt: skip
def test_bad_mixtures_are_one_line_exit_2_and_write_nothing(
    tmp_path, corpora, monkeypatch, mixture, extra, says
):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    a, b = corpora
    spec = mixture.replace("A", a).replace("B", b).replace("EMPTY", str(empty))
    code, err = _cli(monkeypatch, "train", "model.preset=full", "model.dim=32", "model.n_layers=1",
                     "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=32", "train.max_steps=2",
                     f"data.mixture={spec}", *[e.replace("A", a).replace("B", b) for e in extra],
                     "--run-dir", str(tmp_path / "R"), "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert says.replace("A", a).replace("EMPTY", str(empty)) in err
    assert not (tmp_path / "R").exists()


def test_a_mixture_run_resumes_bit_for_bit_after_a_kill_and_records_each_source(tmp_path, corpora):
    from smollm.experiment import load_experiment
    from smollm.rundir import RunDir
    from smollm.train import train

    a, b = corpora
    exp = load_experiment({
        "model": {"preset": "full", "dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1,
                  "intermediate_size": 64, "max_seq_len": 32},
        "data": {"mixture": {a: 0.6, b: 0.4}, "seq_len": 32, "val_fraction": 0.1,
                 "schedule": [{"until_tokens": 4 * 32 * 3, "weights": {b: 1.0}}]},
        "train": {"max_steps": 8, "batch_size": 4, "eval_every": 2, "ckpt_every": 2, "log_every": 1,
                  "eval_blocks": 2, "sample_tokens": 2, "warmup_steps": 2},
        "tracking": {"mode": "disabled"},
    })  # fmt: skip
    whole = train(exp, tmp_path / "U", progress=False)

    def kill(step, _loss):
        if step == 6:  # after the step-6 evaluation, before its checkpoint: resumes from step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp, tmp_path / "R", progress=False, on_eval=kill)
    resumed = train(exp, tmp_path / "R", progress=False)
    for key in ("val_loss", "val_bpb", "val_sources", "epochs"):
        assert resumed[key] == whole[key]
    assert set(whole["val_sources"]) == {a, b} and min(whole["epochs"].values()) > 0
    rows = RunDir(tmp_path / "U").rows("metrics")
    assert rows == RunDir(tmp_path / "R").rows("metrics")
    last = rows[-1]
    assert last[f"val/{a}/bpb"] == round(whole["val_sources"][a]["bpb"], 6)
    assert f"epochs/{b}" in rows[0]
