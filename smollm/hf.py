"""Weights in and out: HF Llama directories, Hub ids, GGUF files and run directories <-> `SmolLM`.

Llama-shaped variants map key for key onto `LlamaForCausalLM`; GGUF tensors are renamed and
llama.cpp's q/k row permutation is undone, so the same file gives the same model as
`transformers`' own GGUF loader.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm import assets
from smollm.checkpoint import load_run_model
from smollm.config import ConfigError, ModelConfig, SmolError
from smollm.model import SmolLM
from smollm.rundir import RunDir
from smollm.runtime import resolve_device
from smollm.tokenizer import model_tokenizer


class WeightsError(SmolError):
    """Weights that cannot be loaded or exported; the message names the problem."""


# ---------------------------------------------------------------------------- HF config <-> ours


def to_llama_config(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` of an equivalent `LlamaForCausalLM`; an error for variants Llama lacks."""
    why = cfg.llama_incompatibility()
    if why:
        raise WeightsError(
            f"LlamaForCausalLM cannot express this variant ({why}); only RoPE + RMSNorm + SwiGLU (SiLU) models export to HF format"
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
        "smollm_config": cfg.to_dict(),  # exact round trip of fields Llama has no slot for
    }


LLAMA_SHAPE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")  # fmt: skip


def from_llama_config(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Our config from an HF Llama `config.json` (or ours, if it carries `smollm_config`);
    `where` names the file in errors."""
    if not isinstance(hf, dict):
        raise WeightsError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    if "smollm_config" in hf:
        return ModelConfig.from_dict(hf["smollm_config"])
    if hf.get("model_type") not in ("llama", None):
        raise WeightsError(f"model_type {hf.get('model_type')!r} is not a Llama model")
    missing = [k for k in LLAMA_SHAPE if k not in hf]
    if missing:
        raise WeightsError(f"{where}: no {', '.join(missing)}: not a Llama config")
    bad = [k for k in LLAMA_SHAPE if isinstance(hf[k], bool) or not isinstance(hf[k], int)]
    if bad or hf["num_attention_heads"] < 1:
        k = bad[0] if bad else "num_attention_heads"
        raise WeightsError(f"{where}: {k}={hf[k]!r}: expected a positive integer")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise WeightsError(f"{where}: rope_parameters/rope_scaling: expected an object")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise WeightsError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise WeightsError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise WeightsError("head_dim != hidden_size / num_attention_heads is not supported")
    numbers = {"rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
               "rms_norm_eps": hf.get("rms_norm_eps", 1e-5),
               "initializer_range": hf.get("initializer_range", 0.02)}  # fmt: skip
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WeightsError(f"{where}: {key}={value!r}: expected a number")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        rope_theta=float(numbers["rope_theta"]),
        norm_eps=float(numbers["rms_norm_eps"]),
        init_std=float(numbers["initializer_range"]),
    )


# ---------------------------------------------------------------------------- GGUF

_GGUF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved RoPE pairs -> HF rotate-half halves)."""
    # (n_heads * hd, in) -> (n_heads, hd/2, 2, in) -> (n_heads, 2, hd/2, in)
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_config(reader) -> ModelConfig:
    def field(key: str):
        if key not in reader.fields:
            raise WeightsError(f"GGUF file lacks metadata {key!r}")
        return reader.fields[key].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise WeightsError(f"GGUF architecture {arch!r} is not supported (only llama)")
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        dim=int(field("llama.embedding_length")),
        n_layers=int(field("llama.block_count")),
        n_heads=int(field("llama.attention.head_count")),
        n_kv_heads=int(field("llama.attention.head_count_kv")),
        intermediate_size=int(field("llama.feed_forward_length")),
        max_seq_len=int(field("llama.context_length")),
        rope_theta=float(field("llama.rope.freq_base")),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
        bias="blk.0.attn_q.bias" in names,
    )


def read_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and dequantised fp32 state dict of a llama GGUF file (F32/F16/Q8_0/Q4_x...)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise WeightsError(f"{path}: not a readable GGUF file ({e})") from None
    cfg = _gguf_config(reader)
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        m = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)", t.name)
        if not m or m.group(2) not in _GGUF_NAMES:
            raise WeightsError(f"{path}: unexpected GGUF tensor {t.name!r}")
        layer, base, kind = m.groups()
        w = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)  # (out, in) like torch
        if base == "attn_q":
            w = _unpermute(w, cfg.n_heads)
        elif base == "attn_k":
            w = _unpermute(w, cfg.n_kv_heads)
        prefix = f"model.layers.{layer}." if layer is not None else ""
        state[f"{prefix}{_GGUF_NAMES[base]}.{kind}"] = torch.from_numpy(np.ascontiguousarray(w))
    return cfg, state


# ---------------------------------------------------------------------------- load / save


def load_state(model: SmolLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a state dict into the model; the tied lm_head may be absent, nothing else may."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    result = model.load_state_dict(state, strict=False)
    missing = [
        k
        for k in result.missing_keys
        if not (k == "lm_head.weight" and model.config.tie_embeddings)
    ]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{source}: weights do not match the config (missing: {missing[:5]}, unexpected: {result.unexpected_keys[:5]})"
        )


def _read_hf_dir(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = path / "config.json"
    cfg = from_llama_config(
        _unreadable(config, lambda: json.loads(config.read_text())), str(config)
    )
    files = sorted(path.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            state.update(_unreadable(f, lambda f=f: load_file(f)))
    elif (path / "pytorch_model.bin").is_file():
        # weights_only: a pickle that would run code (or is not a state dict) is refused
        bin_ = path / "pytorch_model.bin"
        state = _unreadable(bin_, lambda: torch.load(bin_, map_location="cpu", weights_only=True))
    else:
        raise WeightsError(f"{path}: no *.safetensors or pytorch_model.bin next to config.json")
    return cfg, state


def _unreadable(path: Path, read: Any) -> Any:
    """read(), any failure to read or parse `path` a WeightsError naming it and the cause."""
    try:
        return read()
    except Exception as e:  # a truncated file, a bad pickle, invalid JSON: the file is the problem
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(
            f"{path}: cannot be loaded ({type(e).__name__}: {cause[:200]})"
        ) from None


def _resolve(src: str) -> Path:
    if src == "smollm2":  # the packaged SmolLM2-135M weights, wherever setup installed them
        return assets.packaged_gguf()
    path = Path(src).expanduser()
    if path.exists():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        if not assets.hub_reachable():
            raise WeightsError(
                f"{src!r} is not a local path and the Hugging Face Hub is not reachable; pass a model dir or .gguf file"
            )
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src, allow_patterns=["*.json", "*.safetensors"]))
    raise WeightsError(f"{src!r}: no such file or directory")


def load_pretrained(
    src: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> SmolLM:
    """A model from an HF Llama dir, a Hub id, a .gguf file or a smollm run dir."""
    path = _resolve(str(src))
    if path.is_file() and path.suffix == ".gguf":
        cfg, state = read_gguf(path)
    elif path.is_dir() and (path / "config.json").is_file():
        cfg, state = _read_hf_dir(path)
    elif path.is_dir() and RunDir(path).is_run():
        return load_run_model(RunDir(path), dtype=dtype, device=device)
    else:
        raise WeightsError(
            f"{path}: expected a .gguf file, an HF model dir (config.json) or a smollm run dir"
        )
    try:
        model = SmolLM(cfg)
    except ConfigError as e:
        raise WeightsError(f"{path}: {e}") from None
    load_state(model, state, str(path))
    return model.to(device=device, dtype=dtype).eval()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of weights' content: every tensor's name, shape, dtype and bytes."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def initial_weights(src: str) -> tuple[dict[str, torch.Tensor], str]:
    """The weights `train.init_from` names (whatever load_pretrained reads), in fp32 on the CPU,
    and their digest."""
    state = {
        k: v.detach().float().contiguous() for k, v in load_pretrained(src).state_dict().items()
    }
    return state, state_digest(state)


def save_pretrained(model: SmolLM, out_dir: str | os.PathLike) -> None:
    """config.json + model.safetensors, loadable by `transformers.AutoModelForCausalLM`."""
    from safetensors.torch import save_file

    config = to_llama_config(model.config)  # raises before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # shared with model.embed_tokens.weight
    config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_for_generation(src: str | None, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, display name) for `smol generate` and `smol serve`.

    `src`: a run dir, HF dir, Hub id or .gguf (None: the packaged SmolLM2-135M). `device` auto is
    CUDA when present; `dtype` auto is bf16 on CUDA, fp32 on CPU.
    """
    if dtype not in ("auto", "fp32", "bf16"):
        raise SmolError(f"--dtype {dtype!r}: choose auto, fp32 or bf16")
    dev = resolve_device(device, 0)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = load_pretrained(src or str(assets.packaged_gguf()), dtype=torch_dtype, device=str(dev))
    model.fuse_projections()  # q/k/v and gate/up as one matmul each: fewer kernels per token
    name = Path(src).name if src else "SmolLM2-135M-Instruct (Q4_1 GGUF)"
    return model, model_tokenizer(src), name
