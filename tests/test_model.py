import pytest
import torch

from smollm import ModelConfig, SmolLM
from smollm.model import RMSNorm

VARIANTS = {
    "full": {},
    "learned": {"pos_embedding": "learned"},
    "layernorm": {"norm": "layernorm"},
    "plain": {"mlp": "plain"},
    "mha": {"n_kv_heads": 4},
    "mqa": {"n_kv_heads": 1},
    "untied": {"tie_embeddings": False},
    "bias": {"bias": True},
    "v1-like": {
        "pos_embedding": "learned",
        "norm": "layernorm",
        "mlp": "plain",
        "bias": True,
        "tie_embeddings": False,
        "dropout": 0.1,
    },
}


def make(tiny, **kw):
    torch.manual_seed(0)
    return SmolLM(ModelConfig(**{**tiny.to_dict(), **kw})).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shape_and_causality(tiny, name):
    model = make(tiny, **VARIANTS[name])
    ids = torch.randint(0, tiny.vocab_size, (2, 16))
    logits = model(ids)
    assert logits.shape == (2, 16, tiny.vocab_size)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % tiny.vocab_size
    logits2 = model(changed)
    torch.testing.assert_close(logits[:, :10], logits2[:, :10])
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])


def test_tied_embeddings_share_storage(tiny):
    model = make(tiny)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = make(tiny, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_dropout_only_in_training(tiny):
    model = make(tiny, dropout=0.5)
    ids = torch.randint(0, tiny.vocab_size, (1, 8))
    torch.testing.assert_close(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))


def test_rope_tables_stay_fp32_after_cast(tiny):
    model = make(tiny).to(torch.bfloat16)
    assert model.model.rotary_emb.cos.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model(torch.randint(0, tiny.vocab_size, (1, 8))).dtype == torch.bfloat16


def test_single_token_fast_path_matches_plain_linear(tiny):
    model = make(tiny, bias=True)
    ids = torch.randint(0, tiny.vocab_size, (1, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            fast = model(ids)  # grad disabled: the batched matrix-vector path
        plain = model(ids)  # grad enabled: nn.Linear's path
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)


def test_rmsnorm_matches_definition():
    norm = RMSNorm(8, 1e-5)
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected)


def test_sequence_longer_than_context_errors(tiny):
    model = make(tiny, pos_embedding="learned")
    with pytest.raises(ValueError, match="exceeds the context length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_init_is_small_and_seeded(tiny):
    a, b = make(tiny), make(tiny)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    std = a.model.layers[0].self_attn.q_proj.weight.std().item()
    assert 0.015 < std < 0.025
    assert a.model.layers[0].mlp.down_proj.weight.std().item() < std  # residual outputs scaled down


@pytest.mark.parametrize("name", VARIANTS)
def test_trainable_fused_projections_give_the_separate_ones_numbers_and_train_them(tiny, name):
    """fuse_projections(trainable=True) (train.fused_projections): q/k/v and gate/up run as one
    matmul each, joined from the HF-named parameters in every forward; the same loss, the same
    gradient for every parameter, the same state dict, and still one trainable parameter each."""
    import torch.nn.functional as F

    kw = {**VARIANTS[name], "dropout": 0.0}  # the same numbers need the same (no) masks
    plain, fused = make(tiny, **kw).train(), make(tiny, **kw).train()
    assert fused.fuse_projections(trainable=True) is fused and fused.training
    separate = []  # calls of the separate projections the fused forward must not make
    for layer in fused.model.layers:
        mlp = layer.mlp
        joined = [mlp.gate_proj, mlp.up_proj] if hasattr(mlp, "gate_proj") else []
        for m in [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, *joined]:
            m.register_forward_hook(lambda *_: separate.append(1))
    ids = torch.randint(0, tiny.vocab_size, (2, 17))
    losses = []
    for model in (plain, fused):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        losses.append(loss)
    assert not separate
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    named = dict(fused.named_parameters())
    assert named.keys() == dict(plain.named_parameters()).keys()
    for n, p in plain.named_parameters():
        assert named[n].requires_grad and named[n].grad is not None, n
        torch.testing.assert_close(named[n].grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)
    a, b = plain.state_dict(), fused.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("chunk", [7, 100, 4096])
def test_linear_cross_entropy_equals_logits_then_cross_entropy(chunk):
    """The chunked op gives the unfused loss and gradients, whatever the chunk (7 does not divide
    the 100 rows); under bf16 autocast, to bf16's precision."""
    import torch.nn.functional as F

    from smollm.model import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h0, w0 = torch.randn(100, 32, generator=g), torch.randn(300, 32, generator=g) * 0.3
    t = torch.randint(0, 300, (100,), generator=g)
    for amp in (False, True):
        results = []
        for fused in (False, True):
            h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = (linear_cross_entropy(h, w, t, chunk) if fused
                        else F.cross_entropy((h @ w.t()).float(), t))  # fmt: skip
            (2.5 * loss).backward()  # a scaled loss (gradient accumulation's 1/accum) scales both
            results.append((loss, h.grad, w.grad))
        tol = {"rtol": 2e-2, "atol": 2e-3} if amp else {"rtol": 1e-5, "atol": 1e-6}
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a.float(), b.float(), **tol)


def test_fp8_linear_is_the_scaled_fp8_product_and_tracks_the_plain_one():
    """train.fp8=lm_head: the forward is exactly the product of the dequantised FP8 operands
    (scales undo the casts), the gradients are those of the FP8 product of the output gradient,
    and all of them follow the plain bf16-free product to FP8's precision (cosine > 0.999)."""
    import torch.nn.functional as F

    from smollm.model import fp8_linear, to_fp8

    g = torch.Generator().manual_seed(0)
    x0, w0 = torch.randn(3, 40, 48, generator=g), torch.randn(300, 48, generator=g) * 0.05
    t = torch.randint(0, 300, (3, 40), generator=g)
    results = []
    for fp8 in (True, False):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        logits = fp8_linear(x, w) if fp8 else F.linear(x, w)
        assert logits.shape == (3, 40, 300)
        loss = F.cross_entropy(logits.float().flatten(0, 1), t.flatten())
        loss.backward()
        results.append((logits.float(), x.grad, w.grad))
    (x8, sx), (w8, sw) = to_fp8(x0, torch.float8_e4m3fn), to_fp8(w0, torch.float8_e4m3fn)
    assert x8.dtype == torch.float8_e4m3fn and x8.float().abs().max() == 448  # full range used
    dequantised = (x8.float() * sx) @ (w8.float() * sw).t()
    torch.testing.assert_close(results[0][0], dequantised.bfloat16().float(), rtol=0, atol=0)
    for a, b in zip(*results, strict=True):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
        assert not torch.equal(a, b)  # FP8 is not the plain product: the switch does something
    # the backward's operands are FP8 too: its input gradient is the FP8 product, exactly
    grad = torch.randn(120, 300, generator=g).bfloat16()  # the output is bf16, so is its gradient
    g8, sg = to_fp8(grad, torch.float8_e5m2)
    x = x0.flatten(0, 1).clone().requires_grad_()
    fp8_linear(x, w0).backward(grad)
    expected = ((g8.float() * sg) @ (w8.float() * sw)).bfloat16().float()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


@pytest.mark.gpu
def test_fp8_linear_on_the_gpu_is_the_scaled_fp8_product_eager_and_compiled():
    """FP8 tensor cores (compute capability >= 8.9): the CUDA product of the FP8 operands is the
    product of the dequantised ones (to fp32 accumulation order), eager and under inductor."""
    import torch.nn.functional as F

    from smollm.model import fp8_linear, to_fp8

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no FP8 matmuls before compute capability 8.9")
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(256, 576, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(4096, 576, device="cuda", generator=g) * 0.05
    (x8, sx), (w8, sw) = to_fp8(x, torch.float8_e4m3fn), to_fp8(w, torch.float8_e4m3fn)
    expected = (x8.float() * sx) @ (w8.float() * sw).t()
    t = torch.randint(0, 4096, (256,), device="cuda", generator=g)
    for fn in (fp8_linear, torch.compile(fp8_linear, fullgraph=True)):
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(xg, wg)
        torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
        F.cross_entropy(out.float(), t).backward()
        assert xg.grad.dtype == torch.bfloat16 and wg.grad.dtype == torch.float32
        assert torch.isfinite(xg.grad).all() and torch.isfinite(wg.grad).all()
