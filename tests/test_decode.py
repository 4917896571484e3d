"""Static-shape decoding (smollm.decode): the step CUDA graphs capture gives the dynamic path's tokens.

On CPU the static step runs eagerly (the CUDA-graph capture sits behind a device check); the
`gpu` tests capture and replay for real and are skipped without CUDA.
"""

import threading

import pytest
import torch

from smollm import ModelConfig, SmolLM
from smollm.decode import MIN_LENGTH, bucket, pool_for

from .test_model import VARIANTS


def make(tiny, **kw):
    torch.manual_seed(0)
    # A larger init makes the logits peaked, so a greedy comparison is not decided by ties.
    cfg = {**tiny.to_dict(), "n_layers": 3, "max_seq_len": 512, "init_std": 0.2, **kw}
    return SmolLM(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_static_step_gives_the_dynamic_tokens_for_every_variant(tiny, name):
    model = make(tiny, **VARIANTS[name])
    ids = torch.randint(0, tiny.vocab_size, (3, 7))
    dynamic = model.generate(ids, max_new_tokens=40, graphs=False)
    static = model.generate(ids, max_new_tokens=40, graphs=True)
    assert torch.equal(static, dynamic)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]  # left-padded batch
    assert torch.equal(
        model.generate(prompts, max_new_tokens=30, graphs=True),
        model.generate(prompts, max_new_tokens=30, graphs=False),
    )


def test_sampling_and_eos_follow_the_same_path(tiny):
    model = make(tiny)
    ids = torch.randint(0, tiny.vocab_size, (2, 5))
    kw = {"max_new_tokens": 25, "temperature": 0.9, "top_k": 20, "top_p": 0.9}
    a = model.generate(ids, graphs=True, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(ids, graphs=False, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)
    eos = int(a[0, 10])
    a = model.generate(ids, graphs=True, eos_token_id=eos, **{**kw, "temperature": 0.0})
    b = model.generate(ids, graphs=False, eos_token_id=eos, **{**kw, "temperature": 0.0})
    assert torch.equal(a, b)


def test_compiled_static_step_gives_the_same_tokens(tiny):
    model = make(tiny, n_layers=2)
    ids = torch.randint(0, tiny.vocab_size, (1, 6))
    compiled = model.generate(ids, max_new_tokens=24, graphs=True, compile=True)
    assert torch.equal(compiled, model.generate(ids, max_new_tokens=24, graphs=False))


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert bucket(10, MIN_LENGTH, 8192) == 256 and bucket(300, MIN_LENGTH, 8192) == 512
    assert bucket(5000, MIN_LENGTH, 6000) == 6000  # capped at the context length


def test_pool_reuses_decoders_and_never_shares_one(tiny):
    model = make(tiny)
    pool = pool_for(model)
    assert pool_for(model) is pool
    with pool.acquire(model, 1, 20) as a:
        assert a.graph is None  # CPU: no capture, the step runs eagerly
        assert a.cache.k.shape[3] == MIN_LENGTH and a.batch_size == 1
        with pool.acquire(model, 1, 30) as b:  # held concurrently: a second decoder
            assert b is not a
    with pool.acquire(model, 1, 100) as c:  # released ones are reused
        assert c in (a, b)
    with pool.acquire(model, 3, 20) as d:
        assert d.batch_size == 4
    assert len(pool) == 3
    model.to(torch.bfloat16)  # the weights moved: decoders captured on the old ones are not used
    with pool.acquire(model, 1, 20) as e:
        assert e not in (a, b, d) and e.cache.k.dtype == torch.bfloat16


def test_concurrent_generations_are_independent(tiny):
    model = make(tiny)
    prompts = [torch.randint(0, tiny.vocab_size, (1, n)) for n in (3, 5, 7, 9)]
    alone = [model.generate(p, max_new_tokens=30, graphs=False) for p in prompts]
    out = [None] * len(prompts)

    def run(i: int) -> None:
        out[i] = model.generate(prompts[i], max_new_tokens=30, graphs=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, out, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_gives_the_eager_tokens(tiny, dtype):
    model = make(tiny).to(device="cuda", dtype=dtype)
    ids = torch.randint(0, tiny.vocab_size, (2, 7), device="cuda")
    with pool_for(model).acquire(model, 2, 47) as dec:
        pass
    assert dec.graph is not None
    graphed = model.generate(ids, max_new_tokens=40, graphs=True)
    eager = model.generate(ids, max_new_tokens=40, graphs=False)
    assert torch.equal(graphed, eager)
    stop = {"eos_token_id": [int(eager[0, 20]), int(eager[1, 30])], "pad_token_id": 3}
    assert torch.equal(  # greedy with stop tokens: checked in the graph
        model.generate(ids, max_new_tokens=40, graphs=True, **stop),
        model.generate(ids, max_new_tokens=40, graphs=False, **stop),
    )
    kw = {"max_new_tokens": 25, "temperature": 0.9, "top_k": 20}  # sampled on the host
    a = model.generate(ids, graphs=True, generator=torch.Generator("cuda").manual_seed(3), **kw)
    b = model.generate(ids, graphs=False, generator=torch.Generator("cuda").manual_seed(3), **kw)
    assert torch.equal(a, b)


def test_greedy_decoding_picks_in_the_step_and_syncs_only_for_stop_tokens(tiny, monkeypatch):
    """Greedy static decoding picks and feeds back each token inside the step (`greedy_step`,
    what a CUDA graph captures), so the host reads nothing back per token: the reads of device
    values do not grow with the tokens generated unless stop tokens can end the generation.
    Stop tokens (up to MAX_STOP_TOKENS in the step, more on the host) give the dynamic tokens."""
    from smollm.decode import MAX_STOP_TOKENS

    model = make(tiny)
    ids = torch.randint(0, tiny.vocab_size, (2, 5))
    reads = {"n": 0}
    for name in ("__bool__", "item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, real=real, **kw):
            reads["n"] += 1
            return real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(n: int, **kw) -> int:
        reads["n"] = 0
        list(model.generate(ids, max_new_tokens=n, graphs=True, **kw))
        return reads["n"]

    assert reads_for(40) == reads_for(10)  # no per-token sync
    assert reads_for(40, eos_token_id=tiny.vocab_size - 1) > reads_for(
        10, eos_token_id=tiny.vocab_size - 1
    )
    monkeypatch.undo()
    dynamic = model.generate(ids, max_new_tokens=30, graphs=False)
    ends = [int(dynamic[0, 12]), int(dynamic[1, 20])]
    for stop in (ends, [*range(MAX_STOP_TOKENS), *ends]):  # in the step; too many: on the host
        a = model.generate(ids, max_new_tokens=30, graphs=True, eos_token_id=stop, pad_token_id=7)
        b = model.generate(ids, max_new_tokens=30, graphs=False, eos_token_id=stop, pad_token_id=7)
        assert torch.equal(a, b) and a.shape[1] < dynamic.shape[1]
