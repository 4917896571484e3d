"""`smol`: the command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from smollm.config import PRESET_ALIASES, PRESETS, SmolError

app = typer.Typer(
    help="smollm: a research harness for small Llama-style language models (SmolLM2 family).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """['dim=128', 'bias=true'] -> {'dim': 128, 'bias': True} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SmolError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _module_tree(module, name: str = "", depth: int = 0) -> list[str]:  # noqa: ANN001 - nn.Module
    """One line per module with its own parameter count; repeated layers shown once with ×N."""
    n_params = sum(p.numel() for p in module.parameters())
    lines = [
        f"{'  ' * depth}{name or type(module).__name__} ({type(module).__name__}): {n_params:,}"
    ]
    children = list(module.named_children())
    if type(module).__name__ == "ModuleList" and children:
        first_name, first = children[0]
        sub = _module_tree(first, f"{first_name}..{children[-1][0]}", depth + 1)
        sub[0] += f"  each, ×{len(children)}"
        return lines + sub
    for child_name, child in children:
        lines += _module_tree(child, child_name, depth + 1)
    return lines


@app.command()
def inspect(
    preset: Annotated[
        str, typer.Argument(help=f"One of: {', '.join([*PRESETS, *PRESET_ALIASES])}")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="ModelConfig overrides, e.g. dim=128 n_layers=4")
    ] = None,
    seq_len: Annotated[
        int, typer.Option(min=1, help="Sequence length for the attention FLOPs")
    ] = 2048,
) -> None:
    """Print a preset's module tree, parameter counts and FLOPs per token."""
    import torch

    from smollm.config import ModelConfig, flops_per_token
    from smollm.model import SmolLM

    cfg = ModelConfig.from_preset(preset, **parse_overrides(overrides or []))
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = SmolLM(cfg)
    typer.echo("\n".join(_module_tree(model)))
    train_flops = flops_per_token(cfg, seq_len)
    typer.echo(f"\nparameters:               {model.num_parameters():>15,}")
    typer.echo(f"non-embedding parameters: {model.num_parameters(non_embedding=True):>15,}")
    typer.echo(f"FLOPs/token forward:      {train_flops // 3:>15,}  (at seq_len {seq_len})")
    typer.echo(f"FLOPs/token training:     {train_flops:>15,}  (forward + backward)")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue")],
    model: Annotated[
        str | None,
        typer.Option(help="HF model dir, Hub id or .gguf (default: the packaged SmolLM2-135M)"),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=8192)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="0 = greedy")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = 50,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute the whole sequence each step")
    ] = False,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16")] = "fp32",
) -> None:
    """Stream a continuation of PROMPT."""
    import torch

    from smollm import assets
    from smollm.generation import stream
    from smollm.model import SmolLM
    from smollm.tokenizer import ENDOFTEXT, load_tokenizer

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise SmolError(f"--dtype {dtype!r}: choose fp32 or bf16")
    lm = SmolLM.from_pretrained(model or str(assets.packaged_gguf()), dtype=dtypes[dtype])
    tok = load_tokenizer()
    ids = tok(prompt, return_tensors="pt").input_ids
    eos = sorted({tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)} - {None})
    sys.stdout.write(prompt)
    generated: list[int] = []
    shown = ""
    gen = torch.Generator().manual_seed(seed)
    for token in stream(
        lm,
        ids,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        not no_cache,
        eos_token_id=eos,
        generator=gen,
    ):
        generated.append(int(token[0]))
        text = tok.decode(generated, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # hold back a half-decoded UTF-8 character
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")


data_app = typer.Typer(help="Corpora: build the token cache, look at blocks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_config(
    corpus: str | None, tokenizer: str | None, seq_len: int | None, extra: dict | None = None
):  # noqa: ANN202
    from smollm.config import DataConfig

    fields = {
        k: v
        for k, v in {"corpus": corpus, "tokenizer": tokenizer, "seq_len": seq_len}.items()
        if v is not None
    }
    return DataConfig(**fields, **(extra or {}))


CorpusOpt = Annotated[
    str | None, typer.Option(help="sotu | cosmopedia-v2 | hf:<dataset>[:<config>] | path/dir/glob")
]
TokenizerOpt = Annotated[
    str | None, typer.Option(help="smollm2 | bpe-<size> (e.g. bpe-8k) | tokenizer dir")
]


@data_app.command("prepare")
def data_prepare(
    corpus: CorpusOpt = None,
    tokenizer: TokenizerOpt = None,
    text_field: Annotated[str, typer.Option(help="Text column of jsonl/parquet/Hub rows")] = "text",
    max_docs: Annotated[
        int | None, typer.Option(min=2, help="Read at most this many documents")
    ] = None,
) -> None:
    """Tokenise a corpus into the cache (once) and print per-split statistics."""
    from smollm.data import prepare

    cache, _ = prepare(
        _data_config(corpus, tokenizer, None, {"text_field": text_field, "max_docs": max_docs})
    )
    typer.echo(f"cache: {cache.path}")
    typer.echo(f"tokenizer: {cache.meta['tokenizer']} (vocab {cache.vocab_size:,})")
    typer.echo(f"{'split':<7}{'documents':>11}{'tokens':>14}{'bytes':>15}{'bytes/token':>13}")
    for split in ("train", "val"):
        st = cache.stats(split)
        typer.echo(
            f"{split:<7}{st['docs']:>11,}{st['tokens']:>14,}{st['bytes']:>15,}{st['bytes'] / st['tokens']:>13.2f}"
        )


@data_app.command("sample")
def data_sample(
    corpus: CorpusOpt = None,
    tokenizer: TokenizerOpt = None,
    seq_len: Annotated[int, typer.Option(min=2)] = 64,
    n: Annotated[int, typer.Option(min=1, max=100, help="How many blocks")] = 3,
    seed: int = 0,
    split: Annotated[str, typer.Option(help="train or val")] = "train",
) -> None:
    """Print a few decoded training (or validation) blocks."""
    from smollm.data import BlockLoader, prepare
    from smollm.data.loader import gather, validation_blocks

    cache, tok = prepare(_data_config(corpus, tokenizer, seq_len))
    if split not in ("train", "val"):
        raise SmolError(f"--split {split!r}: choose train or val")
    if split == "train":
        x, _ = BlockLoader(cache, seq_len, seed).next(n)
    else:
        x, _ = gather(cache.shards["val"], validation_blocks(cache, seq_len, n), seq_len)
    for i, row in enumerate(x.tolist()):
        typer.echo(f"--- block {i} ({len(row)} tokens) ---")
        typer.echo(tok.decode(row))


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()
    except SmolError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
