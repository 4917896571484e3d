"""torch.compile of the training step: one graph per variant, no graph breaks, no recompiles.

The dynamo-level checks use the `eager` backend (tracing only, seconds); one test runs inductor
itself on the full model and compares the loss and gradients with eager.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from smollm.config import SWITCHES, ModelConfig
from smollm.model import SmolLM
from smollm.train import LMLoss

# Every variant at 10 layers, its own head counts (9 query heads: dim 72, head dim 8).
SMALL = {"dim": 72, "n_layers": 10, "intermediate_size": 96, "vocab_size": 256, "max_seq_len": 64}


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, SMALL["vocab_size"], (2, 33), generator=g)
    return x[:, :-1], x[:, 1:]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("preset", ["smollm2-135m", *sorted(SWITCHES)])
def test_every_preset_compiles_to_one_graph_without_recompiles(preset):
    torch.manual_seed(0)
    net = LMLoss(SmolLM(ModelConfig.from_preset(preset, **SMALL))).train()
    compiled = torch.compile(net, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(3):  # new data, same shapes: must reuse the one graph
            compiled(*batch(seed)).backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


@pytest.mark.parametrize(
    ("fused", "projections", "backend"),
    [
        (False, False, "inductor"),
        (True, False, "aot_eager"),  # train.fused_loss: its autograd Function traced
        (False, True, "inductor"),  # train.fused_projections: q/k/v and gate/up joined
    ],
)
def test_compiled_loss_and_gradients_equal_the_plain_eager_ones(fused, projections, backend):
    """Inductor on the full model, the fused linear + cross-entropy (a custom autograd Function)
    through AOT autograd, and inductor on the model with its projections joined: one graph, no
    breaks or recompiles, the eager plain loss's numbers."""
    torch.manual_seed(0)  # 2 layers: inductor's numbers, not the one-graph check above (seconds)
    model = SmolLM(ModelConfig.from_preset("full", **{**SMALL, "n_layers": 2})).train()
    x, y = batch()
    eager = LMLoss(model)(x, y)
    eager.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    if projections:
        model.fuse_projections(trainable=True)
    compiled = torch.compile(LMLoss(model, fused=fused), backend=backend, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        loss = compiled(x, y)
        loss.backward()
        compiled(*batch(1))  # a second batch: no recompile
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5, msg=n)
    assert counters["stats"]["unique_graphs"] == 1 and sum(counters["graph_break"].values()) == 0


def test_the_fp8_output_layer_compiles_to_one_graph_with_the_eager_numbers():
    """train.fp8=lm_head: the whole loss (its FP8 autograd Function) traced as one graph with no
    breaks or recompiles, and inductor's kernels for the FP8 op (casts, scales, `_scaled_mm`)
    give eager's loss and gradients exactly."""
    import torch.nn.functional as F

    from smollm.model import fp8_linear

    torch.manual_seed(0)
    model = SmolLM(ModelConfig.from_preset("full", **{**SMALL, "n_layers": 2})).train()
    compiled = torch.compile(LMLoss(model, fp8=True), backend="aot_eager", dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(2):
            compiled(*batch(seed)).backward()
    assert counters["stats"]["unique_graphs"] == 1 and sum(counters["graph_break"].values()) == 0

    g = torch.Generator().manual_seed(0)
    h0, w0 = torch.randn(64, 72, generator=g), torch.randn(256, 72, generator=g) * 0.05
    t = torch.randint(0, 256, (64,), generator=g)

    def loss(h, w):
        return F.cross_entropy(fp8_linear(h, w).float(), t)

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, dynamic=False)):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = fn(h, w)
        out.backward()
        results.append((out, h.grad, w.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
