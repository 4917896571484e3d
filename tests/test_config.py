import dataclasses
import re

import pytest
import torch

from smollm import ConfigError, ModelConfig, SmolLM
from smollm.config import PRESETS, flops_per_token, param_count

EXPECTED = {
    "smollm2-135m": 134_515_008,
    "full": 134_515_008,
    "v2": 135_104_832,
    "v1": 150_312_960,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
}


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_named_preset_parameter_counts(name, count):
    cfg = ModelConfig.from_preset(name)
    assert param_count(cfg) == count
    with torch.device("meta"):  # shapes only (1.7B parameters would take 7 GB)
        assert SmolLM(cfg).num_parameters() == count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_formula_matches_tensors_for_every_preset(name):
    cfg = PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation (1.7B in no time)
        model = SmolLM(cfg)
    assert model.num_parameters() == param_count(cfg)
    assert model.num_parameters(non_embedding=True) == param_count(cfg, non_embedding=True)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("full-")])
def test_single_factor_ablations_change_exactly_one_switch(name):
    base, cfg = PRESETS["smollm2-135m"], PRESETS[name]
    diff = {
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)
    }
    assert len(diff) == 1, diff


def test_v1_and_v2_differ_from_full_as_documented():
    v1, v2 = PRESETS["v1"], PRESETS["v2"]
    assert (v2.pos_embedding, v2.max_seq_len) == ("learned", 1024)
    assert (v1.norm, v1.mlp, v1.n_kv_heads, v1.bias, v1.tie_embeddings, v1.dropout) == (
        "layernorm",
        "plain",
        9,
        True,
        False,
        0.1,
    )


@pytest.mark.parametrize(
    ("preset", "kv"), [("full", 2), ("v1", 4), ("full-mha", 4), ("full-mqa", 1), ("v2", 2)]
)
def test_a_shrunk_shape_keeps_each_variants_one_difference(preset, kv):
    """The base shrinks to 4 heads / 2 KV heads; MHA and MQA variants stay MHA and MQA."""
    cfg = ModelConfig.from_preset(preset, dim=128, n_layers=4, n_heads=4, n_kv_heads=2)
    assert cfg.n_kv_heads == kv
    assert ModelConfig.from_preset("full", n_heads=4, dim=128, n_kv_heads="mqa").n_kv_heads == 1


def test_shrink_preset_with_overrides():
    cfg = ModelConfig.from_preset("v1", dim=128, n_layers=4, n_heads=4, n_kv_heads=4)
    assert (cfg.dim, cfg.n_layers, cfg.head_dim, cfg.norm) == (128, 4, 32, "layernorm")


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model preset 'smollm2'.*smollm2-135m.*v1"):
        ModelConfig.from_preset("smollm2")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"dim": 100, "n_heads": 3}, "not divisible"),
        ({"n_heads": 9, "n_kv_heads": 4}, "not a multiple"),
        ({"dim": 90, "n_heads": 18, "n_kv_heads": 1}, "even head dim"),
        ({"norm": "batchnorm"}, "choose one of rmsnorm, layernorm"),
        ({"n_layers": 0}, "positive integer"),
        ({"dropout": 1.5}, "dropout"),
        ({"dimension": 3}, "unknown ModelConfig field"),
    ],
)
def test_impossible_shapes_error_clearly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_preset("full", **overrides)


def test_flops_per_token_counts_matmuls():
    cfg = PRESETS["smollm2-135m"]
    # 6 * (body + lm_head) + attention scores
    assert flops_per_token(cfg, 2048) == 6 * (106_203_456 + 28_311_552) + 12 * 30 * 576 * 2048
    # causal: the masked half of the attention scores not counted (llm.c's convention)
    causal = flops_per_token(cfg, 2048, causal=True)
    assert causal == 6 * (106_203_456 + 28_311_552) + 6 * 30 * 576 * 2048


def test_dict_round_trip():
    cfg = PRESETS["v1"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("match", ["params", "flops"])
def test_matching_equalises_sizes_for_every_preset_at_every_shape(match):
    """`match:` sets each variant's MLP width so that its non-embedding parameters (or FLOPs per
    token) equal the baseline's within 1%, at small and at the 135M shape."""
    from smollm.config import matched

    # (shape, rounding multiple): at 64 wide a step of 8 hidden units is 3% of the model
    shapes = [({"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 192}, 1),
              ({"dim": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 384}, 8),
              ({"dim": 256, "n_layers": 6, "n_heads": 8, "n_kv_heads": 4, "intermediate_size": 640}, 8),
              ({}, 8)]  # fmt: skip
    for shape, multiple in shapes:
        base = ModelConfig.from_preset("full", **shape)
        for preset in PRESETS:
            if preset.startswith("smollm2-"):  # other bases, not variants of this shape
                continue
            cfg = ModelConfig.from_preset(preset, **shape)
            out = matched(cfg, base, 256, match, multiple)
            count = (lambda c: param_count(c, non_embedding=True)) if match == "params" else (
                lambda c: flops_per_token(c, 256))  # fmt: skip
            assert abs(count(out) - count(base)) <= 0.01 * count(base), (preset, shape)
            assert out.intermediate_size % multiple == 0
            assert dataclasses.replace(out, intermediate_size=cfg.intermediate_size) == cfg
    with pytest.raises(ConfigError, match="no MLP width"):
        matched(ModelConfig.from_preset("v1", dim=512, n_heads=8, n_kv_heads=8),
                ModelConfig.from_preset("full", dim=64, n_heads=4, n_kv_heads=2), 256, "params", 8)  # fmt: skip


def test_the_output_layer_switches_are_refused_where_they_cannot_run(monkeypatch):
    """fused_loss and fp8 read the output layer outside FSDP's sharded module; they are two ways
    to run that layer; FP8 on a GPU needs compute capability 8.9 and multiples of 16."""
    from smollm.config import SmolError, TrainConfig
    from smollm.runtime import check_fp8

    assert TrainConfig(max_steps=1, fused_loss=True).fused_loss
    assert TrainConfig(max_steps=1, fp8="lm_head").fp8 == "lm_head"
    refused = [({"fused_loss": True, "parallel": "fsdp"}, "train.fused_loss does not combine with train.parallel=fsdp"),
               ({"fp8": "lm_head", "parallel": "fsdp"}, "train.fp8 does not combine with train.parallel=fsdp"),
               ({"fp8": "lm_head", "fused_loss": True}, "train.fp8=lm_head does not combine with train.fused_loss"),
               ({"fp8": "all"}, "train.fp8='all': choose lm_head, or leave it empty")]  # fmt: skip
    for kwargs, match in refused:
        with pytest.raises(ConfigError, match=re.escape(match)):
            TrainConfig(max_steps=1, **kwargs)
    model = ModelConfig.from_preset("smollm2-135m")
    check_fp8(model, 100, "lm_head", torch.device("cpu"))  # any shape on CPU
    check_fp8(model, 100, "", torch.device("cuda"))  # no FP8: nothing asked of the GPU
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    with pytest.raises(SmolError, match=r"A100-SXM4-80GB \(compute capability 8.0\) has no FP8"):
        check_fp8(model, 2048, "lm_head", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    check_fp8(model, 2048, "lm_head", torch.device("cuda"))
    with pytest.raises(SmolError, match="multiples of 16: model.dim 72, data.seq_len 100"):
        check_fp8(dataclasses.replace(model, dim=72), 100, "lm_head", torch.device("cuda"))
