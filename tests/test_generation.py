import pytest
import torch

from smollm import ModelConfig, SmolLM
from smollm.generation import generate, left_pad, sample_next, stream

from .test_model import VARIANTS


def make(tiny, **kw):
    torch.manual_seed(0)
    return SmolLM(ModelConfig(**{**tiny.to_dict(), **kw})).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_cache_equals_no_cache_for_every_variant(tiny, name):
    model = make(tiny, **VARIANTS[name])
    ids = torch.randint(0, tiny.vocab_size, (2, 7))
    cached = model.generate(ids, max_new_tokens=20, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=20, use_cache=False)
    assert cached.shape == (2, 27)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ["full", "learned", "mqa"])
def test_left_padded_batch_equals_each_prompt_alone(tiny, name):
    model = make(tiny, **VARIANTS[name])
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    batch = model.generate(prompts, max_new_tokens=12)
    width = max(map(len, prompts))
    for row, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p]), max_new_tokens=12)
        assert batch[row, width:].tolist() == alone[0, len(p) :].tolist()
    uncached = model.generate(prompts, max_new_tokens=12, use_cache=False)
    assert torch.equal(batch, uncached)


def test_left_pad_layout():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []])


def test_context_length_is_enforced(tiny):
    model = make(tiny, pos_embedding="learned")
    ids = torch.zeros(1, 100, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"prompt \(100 tokens\) \+ max_new_tokens \(29\) exceeds the context length 128",
    ):
        model.generate(ids, max_new_tokens=29)
    assert model.generate(ids, max_new_tokens=28).shape == (1, 128)


def test_stops_at_eos_and_pads_finished_rows(tiny):
    model = make(tiny)
    ids = torch.randint(0, tiny.vocab_size, (2, 4))
    free = model.generate(ids, max_new_tokens=10)
    eos = int(free[0, 6])  # the third token row 0 generates
    out = model.generate(ids, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, 4:].tolist()
    stop = row0.index(eos)
    assert all(t == 0 for t in row0[stop + 1 :])
    if eos not in free[1, 4:].tolist():
        assert out.shape[1] == 14  # row 1 never finished, so generation ran to the end


def test_stream_yields_what_generate_returns(tiny):
    model = make(tiny)
    ids = torch.randint(0, tiny.vocab_size, (1, 5))
    tokens = [int(t[0]) for t in stream(model, ids, 8)]
    assert tokens == model.generate(ids, max_new_tokens=8)[0, 5:].tolist()


def test_sampling_is_seeded_and_respects_top_k(tiny):
    model = make(tiny)
    ids = torch.randint(0, tiny.vocab_size, (1, 5))
    a = model.generate(
        ids, max_new_tokens=16, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    b = model.generate(
        ids, max_new_tokens=16, temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b)
    greedy = model.generate(ids, max_new_tokens=16)
    top1 = model.generate(ids, max_new_tokens=16, temperature=1.0, top_k=1)
    assert torch.equal(greedy, top1)


def test_top_k_and_top_p_filter_the_distribution():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    seen_k = {int(sample_next(logits, 1.0, top_k=2, generator=gen)) for _ in range(200)}
    assert seen_k == {0, 1}
    # probabilities ≈ .64 .24 .09 .03 .01: top_p=0.8 keeps the first two tokens only
    seen_p = {int(sample_next(logits, 1.0, top_p=0.8, generator=gen)) for _ in range(200)}
    assert seen_p == {0, 1}
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=gen)) for _ in range(50)} == {0}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_bad_sampling_arguments(tiny, kwargs, match):
    model = make(tiny)
    with pytest.raises(ValueError, match=match):
        generate(model, torch.zeros(1, 3, dtype=torch.long), **{"max_new_tokens": 4, **kwargs})


@pytest.mark.parametrize("name", VARIANTS)
def test_fused_projections_decode_the_same_tokens_with_fewer_ops_and_keep_the_state_dict(
    tiny, name
):
    """fuse_projections (what smol generate and serve load): q/k/v and gate/up as one matmul
    each; the same logits and greedy tokens, the same state dict (HF names, values), and fewer
    operators per decoded token in the CPU profiler."""
    from torch.profiler import ProfilerActivity, profile

    model = make(tiny, **VARIANTS[name])
    ids = torch.randint(0, tiny.vocab_size, (2, 7))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits, tokens = model(ids), model.generate(ids, max_new_tokens=12, graphs=False)

    def ops_per_token() -> float:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.generate(ids[:1], max_new_tokens=8, graphs=False)
        return sum(e.name.startswith("aten::") for e in prof.events()) / 8

    before = ops_per_token()
    model.fuse_projections()
    torch.testing.assert_close(model(ids), logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(ids, max_new_tokens=12, graphs=False), tokens)
    fused = model.state_dict()
    assert fused.keys() == state.keys() and all(torch.equal(fused[k], state[k]) for k in state)
    assert ops_per_token() < before
