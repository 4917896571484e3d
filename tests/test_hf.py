"""Parity with transformers' LlamaForCausalLM: tiny random configs and the real SmolLM2 weights."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from smollm import ModelConfig, SmolLM, load_pretrained, save_pretrained
from smollm.hf import WeightsError, _unpermute, from_llama_config, to_llama_config


def hf_tiny(n_kv_heads: int, tie: bool = True, bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=128,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-inits nothing we care about, but make norms non-trivial
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("n_kv_heads,label", [(4, "MHA"), (2, "GQA"), (1, "MQA")])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_llama_on_tiny_random_configs(tmp_path, n_kv_heads, label, tie):
    ref = hf_tiny(n_kv_heads, tie=tie)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    assert ours.config.n_kv_heads == n_kv_heads and ours.config.tie_embeddings == tie
    ids = torch.randint(0, 256, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=0, atol=1e-5)


def test_biased_llama_round_trips(tmp_path):
    ref = hf_tiny(2, bias=True)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(str(tmp_path / "hf"))
    assert ours.config.bias
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=0, atol=1e-5)


def test_save_pretrained_loads_in_transformers(tmp_path, tiny):
    torch.manual_seed(0)
    ours = SmolLM(tiny).eval()
    save_pretrained(ours, tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(ref, LlamaForCausalLM)
    ids = torch.randint(0, tiny.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, rtol=0, atol=1e-5)
    again = load_pretrained(str(tmp_path))
    assert again.config == tiny  # exact round trip through smollm_config


@pytest.mark.parametrize("preset", ["v1", "v2", "full-layernorm", "full-plain-mlp"])
def test_export_of_non_llama_variant_is_a_clear_error(tmp_path, preset):
    cfg = ModelConfig.from_preset(
        preset, dim=64, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, intermediate_size=64
    )
    with pytest.raises(WeightsError, match="LlamaForCausalLM cannot express this variant"):
        save_pretrained(SmolLM(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_llama_config_conversion_is_inverse(tiny):
    hf = to_llama_config(tiny)
    del hf["smollm_config"]
    assert from_llama_config(hf) == tiny


@pytest.mark.parametrize(
    "change,message",
    [({"num_attention_heads": None}, "c.json: no num_attention_heads: not a Llama config"),
     ({"hidden_size": "64"}, "c.json: hidden_size='64': expected a positive integer"),
     ({"num_attention_heads": 0}, "c.json: num_attention_heads=0: expected a positive integer"),
     ({"rms_norm_eps": "x"}, "c.json: rms_norm_eps='x': expected a number"),
     ({"rope_parameters": 3}, "c.json: rope_parameters/rope_scaling: expected an object")],
)  # fmt: skip
def test_a_llama_config_of_the_wrong_shape_is_one_line(tiny, change, message):
    """A config.json without num_attention_heads was a KeyError traceback."""
    hf = to_llama_config(tiny)
    del hf["smollm_config"]
    hf.update(change)
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(WeightsError) as e:
        from_llama_config(hf, "c.json")
    assert str(e.value) == message
    with pytest.raises(WeightsError, match="c.json: expected a JSON object, got list"):
        from_llama_config([1], "c.json")


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    n_heads = 8
    # llama.cpp's convert_hf_to_gguf permute
    permuted = w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, 3).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(_unpermute(permuted, n_heads), w)


def test_bad_sources_error_clearly(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_pretrained(str(tmp_path / "missing"))
    with pytest.raises(WeightsError, match="Hub is not reachable"):
        load_pretrained("HuggingFaceTB/SmolLM2-135M")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(WeightsError, match="not a readable GGUF"):
        load_pretrained(str(bad))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(
        json.dumps(
            to_llama_config(
                ModelConfig(
                    vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=4, intermediate_size=64
                )
            )
        )
    )
    with pytest.raises(WeightsError, match="no \\*.safetensors"):
        load_pretrained(str(tmp_path / "d"))


# ---------------------------------------------------------------------------- the real weights


def test_real_weights_config_and_count(real_model):
    assert real_model.config == ModelConfig.from_preset(
        "smollm2-135m", norm_eps=real_model.config.norm_eps
    )
    assert abs(real_model.config.norm_eps - 1e-5) < 1e-9
    assert real_model.num_parameters() == 134_515_008


def test_real_weights_logits_match_transformers(real_model, hf_real_model):
    ids = torch.randint(0, 49152, (1, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = real_model(ids), hf_real_model(ids).logits
    assert (ours - ref).abs().max().item() <= 1e-4


def test_real_weights_greedy_generation_matches_transformers(real_model, hf_real_model, tokenizer):
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    ours = real_model.generate(ids, max_new_tokens=32)
    with torch.no_grad():
        ref = hf_real_model.generate(
            ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None
        )
    assert torch.equal(ours, ref)
    text = tokenizer.decode(ours[0, ids.shape[1] :])
    assert len(text.split()) > 12  # real English words, not one repeated token


def test_real_weights_export_round_trip(tmp_path, real_model):
    save_pretrained(real_model, tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(real_model(ids), ref(ids).logits)
