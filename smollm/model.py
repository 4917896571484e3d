"""The SmolLM model family: one decoder whose parts are chosen by `ModelConfig`.

Module and parameter names follow HF `LlamaForCausalLM` (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, `model.norm`, `lm_head`),
so a SmolLM2 checkpoint loads key for key. Parts that only other variants have get their own names:
`model.embed_positions` (learned positions), `*.bias` (linear biases, LayerNorm).
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from smollm import generation
from smollm.config import InputError, ModelConfig
from smollm.kvcache import KVCache, LayerCache


class Linear(nn.Linear):
    """nn.Linear with a faster CPU path for one token (the decode step), same parameters and names.

    A single-token fp32 product is a matrix-vector product that MKL runs on one core, bound by how
    fast one core streams the weight. Viewing the weight's rows as `n_threads` blocks and running a
    batched matmul spreads the stream over every core (≈1.6x decode on 2 cores, see
    benchmarks/generate.py). bf16 goes through oneDNN, which already uses every core.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile never takes this path: get_num_threads() would break its graph.
        if torch.compiler.is_compiling() or x.device.type != "cpu":
            return super().forward(x)
        n = torch.get_num_threads()
        if (
            x.numel() == self.in_features
            and n > 1
            and x.dtype == torch.float32
            and self.out_features % n == 0
            and not torch.is_grad_enabled()
        ):
            # (n, 1, in) @ (n, in, out/n) -> (n, 1, out/n) -> (..., out)
            w = self.weight.view(n, self.out_features // n, self.in_features).transpose(1, 2)
            y = torch.bmm(x.reshape(1, 1, -1).expand(n, 1, -1), w).reshape(
                *x.shape[:-1], self.out_features
            )
            return y if self.bias is None else y + self.bias
        return super().forward(x)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, as HF Llama does (the weight multiplies after the cast back)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _layernorm(dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps)


ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.intermediate_size, bias=cfg.bias)
        self.up_proj = Linear(cfg.dim, cfg.intermediate_size, bias=cfg.bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None or self.joined:  # one matmul for both
            w, b = (self.gate_up, self.gate_up_bias) if self.gate_up is not None else (
                _joined(self.gate_proj, self.up_proj))  # fmt: skip
            gate, up = F.linear(x, w, b).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    # set by SmolLM.fuse_projections: the fused weights (inference), or joined in each forward
    gate_up: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    joined: bool = False


class PlainMLP(nn.Module):
    """down(act(up(x))): the GPT-2 style MLP of v1."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up_proj = Linear(cfg.dim, cfg.intermediate_size, bias=cfg.bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


def _dropout(p: float) -> nn.Module:
    """nn.Dropout, or Identity at p=0: eager dropout at 0 is already a no-op, but a compiled graph
    would still draw a random mask for every activation."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


# The one place where config literals become classes.
NORMS = {"rmsnorm": RMSNorm, "layernorm": _layernorm}
MLPS = {"swiglu": SwiGLU, "plain": PlainMLP}


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE with cos/sin tables kept in fp32 whatever dtype the model is cast to."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self._build(torch.device("cpu"))

    def _build(self, device: torch.device) -> None:
        inv_freq = 1.0 / (
            self.theta
            ** (
                torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
                / self.head_dim
            )
        )
        t = torch.arange(self.max_seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_seq_len, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_seq_len, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(dtype) would round the tables to bf16; rebuild them in fp32 on the new device instead.
        super()._apply(fn, recurse)
        self._build(self.cos.device)
        return self

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[position_ids], self.sin[position_ids]  # (B, T, head_dim) each


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd); cos/sin (B, T, hd) in fp32, cast to x's dtype as HF does."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Multi-head attention with n_kv_heads key/value heads (MHA, GQA or MQA), through SDPA."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.k_proj = Linear(cfg.dim, kv_dim, bias=cfg.bias)
        self.v_proj = Linear(cfg.dim, kv_dim, bias=cfg.bias)
        self.o_proj = Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: LayerCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv is not None or self.joined:  # one matmul for q, k and v
            w, b = (self.qkv, self.qkv_bias) if self.qkv is not None else (
                _joined(self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
            kv = self.n_kv_heads * self.head_dim
            q, k, v = F.linear(x, w, b).split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # (B, T, H*hd) -> (B, H, T, hd)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, n_kv, S, hd): cached + T, or the whole static buffer
        # A single new token attends to everything cached; a fresh prompt with no padding is causal.
        is_causal = mask is None and T > 1
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, dim)

    # set by SmolLM.fuse_projections: the fused weights (inference), or joined in each forward
    qkv: torch.Tensor | None = None
    qkv_bias: torch.Tensor | None = None
    joined: bool = False


def _joined(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) holding the linears' rows in order. Under autograd each linear's
    parameter gets its rows of the joined one's gradient."""
    weight = torch.cat([m.weight for m in linears])
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    return weight, bias


def _fuse(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The linears joined once; each linear's weight (and bias) becomes a frozen Parameter viewing
    its rows of the joined one: one storage, the HF names kept."""
    sizes = [m.weight.shape[0] for m in linears]
    with torch.no_grad():
        weight, bias = _joined(*linears)
    for i, m in enumerate(linears):
        m.weight = nn.Parameter(weight.split(sizes)[i], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias.split(sizes)[i], requires_grad=False)
    return weight, bias


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = NORMS[cfg.norm](cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = NORMS[cfg.norm](cfg.dim, cfg.norm_eps)
        self.mlp = MLPS[cfg.mlp](cfg)
        self.resid_dropout = _dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache):
        # No per-layer Python state reaches the forward (no layer index): torch.compile traces one
        # layer body that every layer shares, so nothing specialises and nothing recompiles.
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), rope, mask, cache))
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """Embeddings, decoder layers and the final norm (HF's `LlamaModel`, named `model`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.pos_embedding == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.dim)
        else:
            self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.dropout = _dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = NORMS[cfg.norm](cfg.dim, cfg.norm_eps)

    def forward(self, input_ids, position_ids, mask, cache):
        x = self.embed_tokens(input_ids)
        rope = None
        if hasattr(self, "embed_positions"):
            x = x + self.embed_positions(position_ids)
        else:
            rope = self.rotary_emb(position_ids)
        x = self.dropout(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, cache.layers[i] if cache is not None else None)
        return self.norm(x)


class SmolLM(nn.Module):
    """A decoder-only language model of the SmolLM family."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # drawn before any submodule exists (their default init draws from the same RNG)
        seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
        self.config = config
        self.model = Backbone(config)
        self.lm_head = Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        """N(0, init_std) weights, the residual-stream projections smaller (GPT-2: 1/sqrt(2 * n_layers)),
        zero biases, unit norms.

        Each weight draws from its own generator, seeded by one draw from torch's global RNG and the
        weight's name: `torch.manual_seed(s)` still fixes the model, and variants that share a weight
        (same name and shape) start from the same values, so a paired comparison of two variants
        sees the architecture, not a different initialisation.
        """
        std, done = self.config.init_std, set()
        residual = (".self_attn.o_proj", ".mlp.down_proj")
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if not isinstance(module, (nn.Linear, nn.Embedding)) or id(module.weight) in done:
                continue
            done.add(id(module.weight))  # a tied lm_head is the embedding, initialised once
            if module.weight.is_meta:
                continue
            scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(residual) else 1.0
            g = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
            with torch.no_grad():
                module.weight.normal_(0.0, std * scale, generator=g)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) with `last_only`.

        attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, covering the cached
        positions and the new ones; None means no padding.
        """
        x = self.hidden(input_ids, position_ids, attention_mask, cache)
        return self.lm_head(x[:, -1:] if last_only else x)

    def hidden(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states (B, T, dim) that `lm_head` turns into logits (a fused
        linear + cross-entropy takes them instead of the logits); arguments as `forward`'s."""
        T = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise InputError(
                f"sequence length {start + T} exceeds the context length {self.config.max_seq_len}"
            )
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, start, T, input_ids.device)
        mask = build_mask(attention_mask, start, T, input_ids.device)
        x = self.model(input_ids, position_ids, mask, cache)
        if cache is not None:
            cache.advance(T)
        return x

    def fuse_projections(self, trainable: bool = False) -> SmolLM:
        """Each layer's q/k/v and gate/up projections as one matmul each; the state dict keeps its
        HF Llama names and values either way.

        For inference (generation, serving; the default): fewer kernels per decoded token. The
        parameters become frozen views into fused weights made once; call it after the model has
        its device and dtype, and do not train it afterwards.
        `trainable=True` (train.fused_projections): the parameters stay as they are and each
        forward joins them (a copy of the weights, small beside the activations) before one
        larger matmul, which a GPU runs more efficiently than two or three narrow ones; the
        backward is one matmul too and hands each parameter its rows of the gradient."""
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            swiglu = isinstance(mlp, SwiGLU)  # a plain MLP has one projection before the act
            if trainable:
                attn.joined = True
                if swiglu:
                    mlp.joined = True
                continue
            attn.qkv, attn.qkv_bias = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
            if swiglu:
                mlp.gate_up, mlp.gate_up_bias = _fuse(mlp.gate_proj, mlp.up_proj)
        return self if trainable else self.eval()

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab) of one new token per row, written at the device tensor `cache.slot`.

        The static-shape step that `smollm.decode` captures in a CUDA graph: no Python value
        depends on the position, and attention covers the whole buffer, masked by `cache.valid`.
        """
        valid = cache.valid  # (B, max_len) bool
        position_ids = valid.sum(-1, keepdim=True)  # (B, 1): the real tokens before this one
        valid.index_fill_(1, cache.slot, True)
        x = self.model(tokens, position_ids, valid[:, None, None, :], cache)
        return self.lm_head(x)[:, -1]

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count from the tensors themselves (tied weights counted once)."""
        params = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in params.values())
        if non_embedding:
            embeds = [self.model.embed_tokens.weight]
            if hasattr(self.model, "embed_positions"):
                embeds.append(self.model.embed_positions.weight)
            if not self.config.tie_embeddings:
                embeds.append(self.lm_head.weight)
            total -= sum(p.numel() for p in embeds)
        return total

    def generate(self, input_ids, **kwargs) -> torch.Tensor:
        """Continue `input_ids` (a tensor or a list of token lists); see `smollm.generation.generate`."""
        return generation.generate(self, input_ids, **kwargs)


def positions_from_mask(
    attention_mask: torch.Tensor | None, start: int, T: int, device
) -> torch.Tensor:
    """Position of each new token: its index among the real (non-pad) tokens of its row."""
    if attention_mask is None:
        return torch.arange(start, start + T, device=device).unsqueeze(0)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos[:, start : start + T].clamp(min=0)


def build_mask(
    attention_mask: torch.Tensor | None, start: int, T: int, device
) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask for SDPA, or None when plain causal attention is exact."""
    if attention_mask is None:
        if start == 0 or T == 1:
            return None  # is_causal (prompt) or attend-to-all (one new token)
        valid = torch.ones(1, start + T, dtype=torch.bool, device=device)
    else:
        valid = attention_mask[:, : start + T].bool()
    q_pos = torch.arange(start, start + T, device=device)[:, None]
    k_pos = torch.arange(start + T, device=device)[None, :]
    causal = k_pos <= q_pos  # (T, S)
    # Every query also sees itself, so a padding query never has an empty row (NaN in softmax).
    mask = (causal & valid[:, None, :]) | (k_pos == q_pos)
    return mask[:, None]  # (B, 1, T, S)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, computed `chunk` rows at a
    time, so the (rows, vocab) logits never exist whole: each chunk's logits are formed (fp32
    accumulation), give their loss and, at once, their gradients (softmax - one-hot), and are
    freed. The gradients are kept from the forward for the backward, which only scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:  # fmt: skip
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            probs = torch.exp(logits - lse[:, None])
            probs.scatter_add_(1, y[:, None], torch.full_like(lse[:, None], -1.0))
            probs = (probs / n).to(hidden.dtype)
            grad_hidden[start : start + chunk] = probs @ weight
            grad_weight += (probs.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """`F.cross_entropy((hidden @ weight.T).float(), targets)` without materialising the logits
    (LinearCrossEntropy). hidden (N, dim), weight (vocab, dim), targets (N,)."""
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk)


def to_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x in an FP8 format, scaled so that its largest magnitude is the format's largest (one scale
    per tensor, from this tensor: "dynamic tensorwise"), and the fp32 scale that undoes it."""
    top = torch.finfo(dtype).max
    scale = x.detach().abs().amax().float().clamp(min=1e-12) / top
    return (x.float() / scale).clamp(-top, top).to(dtype), scale


class FP8Linear(torch.autograd.Function):
    """`x @ weight.T` with both operands in float8_e4m3 and the output gradient in float8_e5m2
    (more range, less precision, as gradients need), each with its own dynamic tensorwise scale;
    products accumulate in fp32 (`torch._scaled_mm`: FP8 tensor cores on sm89+ GPUs). Only the
    FP8 copies are kept for the backward. Changes numerics: opt-in (train.fp8=lm_head)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x8, sx = to_fp8(x, torch.float8_e4m3fn)  # (N, dim)
        w8, sw = to_fp8(weight, torch.float8_e4m3fn)  # (vocab, dim)
        ctx.save_for_backward(x8, sx, w8, sw)
        ctx.dtypes = x.dtype, weight.dtype
        # _scaled_mm wants its first operand row-major and its second column-major
        return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x8, sx, w8, sw = ctx.saved_tensors
        g8, sg = to_fp8(grad, torch.float8_e5m2)  # (N, vocab)
        grad_x = torch._scaled_mm(  # (N, vocab) @ (vocab, dim)
            g8, w8.t().contiguous().t(), scale_a=sg, scale_b=sw, out_dtype=torch.bfloat16
        )
        grad_w = torch._scaled_mm(  # (vocab, N) @ (N, dim)
            g8.t().contiguous(), x8.t().contiguous().t(), scale_a=sg, scale_b=sx,
            out_dtype=torch.float32,
        )  # fmt: skip
        return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1])


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` (no bias) through FP8 matmuls (FP8Linear); x (..., dim) -> (..., out),
    in bf16."""
    return FP8Linear.apply(x.flatten(0, -2), weight).unflatten(0, x.shape[:-1])
