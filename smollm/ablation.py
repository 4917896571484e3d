"""`smol run ablation`: every (variant, seed) of an ablation file, in turn, resumable.

An ablation file (experiments/*.yaml):
    name: default
    base: {model: {...}, data: {...}, train: {...}, tracking: {...}}   # an experiment, as for smol train
    from_sweep: default                                                 # optional: best params of a study
    variants:                                                           # a preset name, or
      - full
      - {name: v1, preset: v1, overrides: [model.n_kv_heads=4]}          # name + preset + dotlist
    seeds: [0, 1]
    baseline: full                                                      # differences are taken from it
    reference: true                                                     # also evaluate pretrained SmolLM2
Runs land in runs/<name>/<variant>-s<seed>/; one W&B group per ablation.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smollm.config import ConfigError, DataConfig, ExperimentConfig, SmolError
from smollm.experiment import experiment_schema, merge, read_mapping, to_experiment
from smollm.tracking import machine

ABLATION_KEYS = {
    "name",
    "base",
    "variants",
    "seeds",
    "baseline",
    "reference",
    "description",
    "from_sweep",
}


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ablation:
    name: str
    base: Any  # merged OmegaConf experiment (without the variant's preset)
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    baseline: str
    reference: bool = True
    description: str = ""
    raw: dict = field(default_factory=dict)
    source: tuple[str, tuple[str, ...]] = ("", ())  # (file, overrides): how a worker reloads it

    def experiment(self, variant: Variant, seed: int) -> ExperimentConfig:
        """The experiment of one run: preset, then the base's overrides, then the variant's."""
        cfg = merge(
            self.base,
            [
                {"model": {"preset": variant.preset}, "train": {"seed": seed}},
                list(variant.overrides),
            ],
        )
        cfg = merge(
            cfg,
            [
                {
                    "tracking": {
                        "group": self.name,
                        "name": run_name(variant, seed),
                        "job_type": "ablation",
                        "tags": [variant.name],
                    }
                }
            ],
        )
        return to_experiment(cfg)


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name}-s{seed}"


def _variant(spec: Any) -> Variant:
    if isinstance(spec, str):
        return Variant(spec, spec)
    if isinstance(spec, dict) and set(spec) <= {"name", "preset", "overrides"} and "preset" in spec:
        return Variant(
            spec.get("name", spec["preset"]), spec["preset"], tuple(spec.get("overrides") or ())
        )
    raise ConfigError(f"variant {spec!r}: give a preset name or {{name, preset, overrides}}")


def _swept(spec: Any) -> list[str]:
    """`from_sweep: {name: NAME, storage: URL?, runs_dir: runs}` -> the study's best parameters."""
    if not spec:
        return []
    from smollm.sweep import best_params, storage_url

    spec = {"name": spec} if isinstance(spec, str) else spec
    url = storage_url(spec["name"], Path(spec.get("runs_dir", "runs")), spec.get("storage"))
    return [f"{k}={v}" for k, v in best_params(spec["name"], url).items()]


def load_ablation(path: str | Path, overrides: list[str] | None = None) -> Ablation:
    """Read an ablation file; dotlist overrides apply to the base experiment (e.g. train.max_steps=5)."""
    raw = read_mapping(path, "ablation", ABLATION_KEYS)
    base = merge(
        experiment_schema(),
        [raw.get("base") or {}, _swept(raw.get("from_sweep")), list(overrides or [])],
    )
    variants = tuple(_variant(v) for v in raw.get("variants") or [])
    if not variants:
        raise ConfigError(f"{path}: no variants")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate variant names")
    ablation = Ablation(
        name=str(raw.get("name") or Path(path).stem), base=base, variants=variants,
        seeds=tuple(int(s) for s in raw.get("seeds") or [0]), baseline=str(raw.get("baseline") or names[0]),
        reference=bool(raw.get("reference", True)), description=str(raw.get("description") or ""), raw=raw,
        source=(str(path), tuple(overrides or ())),
    )  # fmt: skip
    seen: dict[str, str] = {}
    for v in variants:  # every run's config is valid and distinct before anything starts
        exp = ablation.experiment(v, ablation.seeds[0]).to_dict()
        key = json.dumps(
            {k: exp[k] for k in ("model", "data", "train")}, sort_keys=True, default=str
        )
        if key in seen:
            raise ConfigError(
                f"{path}: variants {seen[key]!r} and {v.name!r} resolve to the same experiment (does the base override what the preset changes?)"
            )
        seen[key] = v.name
    if ablation.baseline not in names:
        raise ConfigError(
            f"{path}: baseline {ablation.baseline!r} is not a variant ({', '.join(names)})"
        )
    return ablation


def run_ablation(
    ablation: Ablation, runs_root: Path, progress: bool = True, workers: int = 1
) -> list[dict[str, Any]]:
    """Train every (variant, seed) not yet finished; a failure is recorded and the rest go on.

    With `workers` > 1 the runs go to that many processes, worker i on GPU i mod n.
    """
    root = runs_root / ablation.name
    root.mkdir(parents=True, exist_ok=True)
    (root / "ablation.json").write_text(json.dumps(ablation.raw, indent=2) + "\n")
    provenance_path = root / "provenance.json"
    if not provenance_path.is_file():
        provenance_path.write_text(
            json.dumps(
                {
                    "command": " ".join(["smol", *sys.argv[1:]]),
                    "machine": machine(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
    jobs = [(v, s) for v in ablation.variants for s in ablation.seeds]
    if workers > 1 and len(jobs) > 1:
        outcomes = _run_parallel(ablation, root, len(jobs), workers)
    else:
        outcomes = [_run_one(ablation, root, i, progress) for i in range(len(jobs))]
    if ablation.reference:
        evaluate_reference(ablation, root, progress)
    return outcomes


def _run_one(ablation: Ablation, root: Path, index: int, progress: bool) -> dict[str, Any]:
    """Train the index-th (variant, seed) of the ablation; its outcome row."""
    from smollm.train import train

    jobs = [(v, s) for v in ablation.variants for s in ablation.seeds]
    variant, seed = jobs[index]
    run_dir = root / run_name(variant, seed)
    print(f"[{index + 1}/{len(jobs)}] {run_dir.name}", file=sys.stderr, flush=True)
    try:
        summary = train(ablation.experiment(variant, seed), run_dir, progress=progress)
    except (SmolError, RuntimeError, ValueError, OSError) as e:  # recorded, the ladder goes on
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        if not isinstance(e, SmolError):
            (run_dir / "error.log").write_text(traceback.format_exc())
        _record_failure(run_dir, summary)
    return {
        "run": run_dir.name,
        "variant": variant.name,
        "seed": seed,
        **{k: summary.get(k) for k in ("status", "step", "val_loss", "val_bpb", "error")},
    }


def _worker(source: tuple, root: str, todo, done, threads: int) -> None:  # noqa: ANN001
    """A worker process: take job indices from `todo` until it is empty, put outcomes on `done`."""
    import queue

    import torch

    torch.set_num_threads(threads)
    ablation = load_ablation(source[0], list(source[1]))
    while True:
        try:
            index = todo.get_nowait()
        except queue.Empty:
            return
        done.put((index, _run_one(ablation, Path(root), index, progress=False)))


def _run_parallel(
    ablation: Ablation, root: Path, n_jobs: int, workers: int
) -> list[dict[str, Any]]:
    """The jobs over `workers` processes; a worker that dies fails its job, the others go on."""
    import multiprocessing as mp
    import os
    import queue

    from smollm.runtime import start_workers

    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for i in range(n_jobs):
        todo.put(i)
    workers = min(workers, n_jobs)
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = start_workers(_worker, [(ablation.source, str(root), todo, done, threads)] * workers)
    outcomes: dict[int, dict[str, Any]] = {}
    while len(outcomes) < n_jobs:
        try:
            index, outcome = done.get(timeout=1.0)
            outcomes[index] = outcome
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and done.empty():
                break
    for p in procs:
        p.join()
    jobs = [(v, s) for v in ablation.variants for s in ablation.seeds]
    for i, (variant, seed) in enumerate(jobs):  # a job whose worker died without an outcome
        if i not in outcomes:
            error = f"its worker process exited (codes {[p.exitcode for p in procs]})"
            outcomes[i] = {"run": run_name(variant, seed), "variant": variant.name, "seed": seed,
                           "status": "failed", "error": error}  # fmt: skip
            _record_failure(root / run_name(variant, seed), {"status": "failed", "error": error})
    return [outcomes[i] for i in range(n_jobs)]


def _record_failure(run_dir: Path, summary: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    if existing.get("status") not in ("diverged",):  # train() already wrote the richer record
        path.write_text(json.dumps(summary, indent=2) + "\n")


def evaluate_reference(ablation: Ablation, root: Path, progress: bool) -> dict[str, Any]:
    """Pretrained SmolLM2-135M (packaged weights) on the same validation documents, once."""
    path = root / "reference" / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    from smollm import assets
    from smollm.data import evaluate, prepare
    from smollm.model import SmolLM

    exp = ablation.experiment(ablation.variants[0], ablation.seeds[0])
    data = DataConfig(
        **{**exp.data.__dict__, "tokenizer": "smollm2"}
    )  # same documents, SmolLM2's tokenizer
    cache, _ = prepare(data, progress=progress)
    model = SmolLM.from_pretrained(str(assets.packaged_gguf()))
    n_blocks = max(1, exp.train.eval_blocks * exp.data.seq_len // data.seq_len)
    result = evaluate(model, cache, data.seq_len, batch_size=4, max_blocks=n_blocks)
    summary = {
        "status": "finished", "variant": "SmolLM2-135M-Instruct (pretrained, Q4_1 GGUF)", "tokenizer": "smollm2",
        "parameters": model.num_parameters(), "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "val_loss": result.loss, "val_bpb": result.bits_per_byte, "val_tokens": result.tokens,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
