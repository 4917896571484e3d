"""`smol run ablation`: every (variant, seed) of an ablation file, resumable, in one or N processes.

An ablation file (`experiments/*.yaml`, or any path):
    name: default
    base: {model: {...}, data: {...}, train: {...}, tracking: {...}}   # an experiment, as for smol train
    from_sweep: default                                                 # optional: best params of a study
    variants:                                                           # a preset name, or
      - full
      - {name: v1-small, preset: v1, overrides: [model.dim=64]}          # name + preset + dotlist
    seeds: [0, 1]
    baseline: full                                                      # differences are taken from it
    reference: true                                                     # also evaluate pretrained SmolLM2
    match: params                  # or flops: MLP widths set so every variant's size equals the baseline's
    match_multiple: 8              # widths rounded to a multiple of this
Runs land in runs/<name>/<variant>-s<seed>/ (`smollm.rundir.AblationDir`); one W&B group per
ablation. A run whose variant was edited since it ran is started over; the others are kept.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smollm.config import (
    MATCHES,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    SmolError,
    experiment_identity,
    matched,
)
from smollm.experiment import (
    base_section,
    check_mapping,
    experiment_schema,
    merge,
    nest,
    read_mapping,
    to_experiment,
)
from smollm.launch import SlurmConfig, slurm_config
from smollm.rundir import (
    AblationDir,
    RunDir,
    RunDirBusy,
    RunDirError,
    path_segment,
    read_json,
    run_name,
    write_json,
)
from smollm.tracking import wandb_mode

ABLATION_KEYS = {"name", "base", "variants", "seeds", "baseline", "reference", "description", "from_sweep", "tune", "launcher", "match", "match_multiple"}  # fmt: skip
TUNE_KEYS = {"space", "n_trials", "seeds", "objective", "sampler", "pruner", "overrides", "timeout",
             "heartbeat_interval", "grace_period", "max_retry", "enqueue"}  # fmt: skip


def _load_file(path: str, overrides: list[str]) -> Ablation:
    return load_ablation(path, overrides)


@dataclass(frozen=True)
class Source:
    """How a worker process or a SLURM task rebuilds an ablation: its file, the command line's
    overrides, and the function that reads them (an ablation file's, or a ladder's for one rung)."""

    path: str = ""
    overrides: tuple[str, ...] = ()
    loader: Callable[[str, list[str]], Ablation] = _load_file  # picklable: a module-level function

    def load(self) -> Ablation:
        return self.loader(self.path, list(self.overrides))

    def anywhere(self) -> Source:
        """The same, with an absolute path: a SLURM job may start in another directory."""
        return dataclasses.replace(self, path=str(Path(self.path).resolve()))


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str = ""  # "": the base's own model preset (a variant that changes data or training)
    overrides: tuple[str, ...] = ()
    sections: str = "{}"  # its model/data/train mapping, as JSON (a frozen dataclass holds no dict)

    def layers(self) -> list:
        """What the variant lays over the base: its preset, its sections, its overrides."""
        import json

        preset = [{"model": {"preset": self.preset}}] if self.preset else []
        return [*preset, json.loads(self.sections), list(self.overrides)]


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
    source: Source = Source()  # how a worker reloads it
    tune: dict | None = None  # `tune:` of the file: a per-variant search (see tune_sweep)
    launcher: SlurmConfig = SlurmConfig()  # `launcher:`: each run's resources on SLURM
    # `match: params | flops`: each variant's MLP width set so its non-embedding parameters (or
    # FLOPs per token) equal the baseline's, rounded to a multiple of match_multiple
    match: str = "none"
    match_multiple: int = 8
    # a ladder's rung: its runs' W&B group is the ladder's (`group`), with `size` in the config
    size: str = ""
    group: str = ""  # W&B group (default: the name)

    def experiment(
        self, variant: Variant, seed: int, tuned: dict[str, Any] | None = None
    ) -> ExperimentConfig:
        """The experiment of one run: preset, the base's overrides, the variant's, its tuned
        values; with `match`, its MLP width matched to the baseline's size."""
        tracking = {"group": self.group or self.name, "variant": variant.name, "size": self.size,
                    "name": "-".join(filter(None, [self.size, variant.name, f"s{seed}"])),
                    "job_type": "ladder" if self.size else "ablation",
                    "tags": [t for t in (variant.name, self.size) if t]}  # fmt: skip
        layers = [*variant.layers(), {"train": {"seed": seed}}, nest(tuned or {}),
                  {"tracking": tracking}]  # fmt: skip
        exp = to_experiment(merge(self.base, layers))
        if self.match == "none" or variant.name == self.baseline:
            return exp
        base = next(v for v in self.variants if v.name == self.baseline)
        target = self.experiment(base, seed).model
        model = matched(exp.model, target, exp.data.seq_len, self.match, self.match_multiple)
        return dataclasses.replace(exp, model=model)

    def tune_sweep(self, variant: Variant):
        """The variant's own search (`tune:`): its experiment, the space, tuning's overrides."""
        from smollm.sweep import sweep_from_mapping

        tracking = {
            "group": f"{self.name}-tune",
            "tags": [variant.name],
            "job_type": "tune",
            "variant": variant.name,
        }
        layers = [*variant.layers(), list(self.tune.get("overrides") or []),
                  {"tracking": tracking}]  # fmt: skip
        spec = {k: v for k, v in self.tune.items() if k != "overrides"}
        return sweep_from_mapping(
            spec,
            f"{self.name}-{variant.name}",
            merge(self.base, layers),
            f"{self.source.path}: tune",
        )

    def jobs(self) -> list[tuple[Variant, int]]:
        """Every (variant, seed), variant by variant."""
        return [(v, s) for v in self.variants for s in self.seeds]


VARIANT_KEYS = {"name", "preset", "overrides", "model", "data", "train"}


def _variant(spec: Any) -> Variant:
    """A preset name, or {name, preset?, model?, data?, train?, overrides?}: a model preset, or a
    change of data or training (e.g. {name: chat, data: {corpus: chitchat}}) on the base's model."""
    import json

    if isinstance(spec, str):
        return Variant(spec, spec)
    ok = (
        isinstance(spec, dict)
        and set(spec) <= VARIANT_KEYS
        and ("preset" in spec or "name" in spec)
    )
    sections = {k: spec[k] for k in ("model", "data", "train") if k in spec} if ok else {}
    listed = ok and isinstance(spec.get("overrides") or [], list)
    if listed and all(isinstance(v, dict) for v in sections.values()):
        name = str(spec.get("name", spec.get("preset")))
        return Variant(name, str(spec.get("preset") or ""), tuple(spec.get("overrides") or ()),
                       json.dumps(sections, sort_keys=True))  # fmt: skip
    raise ConfigError(
        f"variant {spec!r}: give a preset name or {{name, preset, model, data, train, overrides}} "
        "(a preset or a name; sections are mappings, overrides a list of key=value)"
    )


def _swept(spec: Any, path: str | Path) -> dict[str, Any]:
    """`from_sweep: {name: NAME, storage: URL?, runs_dir: runs}` -> the study's best parameters."""
    if not spec:
        return {}
    from smollm.sweep import best_params, storage_url

    spec = {"name": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"{path}: from_sweep: {spec!r}: give a study's name, or {{name, storage?, runs_dir?}}"
        )
    url = storage_url(spec["name"], Path(spec.get("runs_dir", "runs")), spec.get("storage"))
    return nest(best_params(spec["name"], url))  # typed values, not strings re-parsed


def load_ablation(path: str | Path, overrides: list[str] | None = None) -> Ablation:
    """Read an ablation file; dotlist overrides apply to the base experiment (e.g. train.max_steps=5),
    `launcher.KEY=VALUE` ones to its `launcher:` section."""
    raw = read_mapping(path, "ablation", ABLATION_KEYS)
    return ablation_from_mapping(raw, path, overrides, Source(str(path), tuple(overrides or ())))


def check_shapes(raw: dict[str, Any], path: str | Path) -> None:
    """An ablation's (or a ladder's) `base:` is a mapping and its `variants:` a list."""
    base_section(raw, path)
    if not isinstance(raw.get("variants") or [], list):
        raise ConfigError(f"{path}: variants: a list of preset names or {{name, preset, ...}}")


def ablation_from_mapping(
    raw: dict[str, Any], path: str | Path, overrides: list[str] | None, source: Source, **extra
) -> Ablation:
    """An ablation from its file's mapping (`path` names it in errors); `extra`: fields a ladder
    gives its rungs (size, group)."""
    check_mapping(raw, ABLATION_KEYS, f"{path}:", "ablation")
    check_shapes(raw, path)
    if not isinstance(raw.get("reference", True), bool):
        raise ConfigError(f"{path}: reference={raw['reference']!r}: true or false")
    overrides = list(overrides or [])
    launching = [o for o in overrides if o.startswith("launcher.")]
    base = merge(
        experiment_schema(),
        [raw.get("base") or {}, _swept(raw.get("from_sweep"), path),
         [o for o in overrides if o not in launching]],
    )  # fmt: skip
    variants = tuple(_variant(v) for v in raw.get("variants") or [])
    if not variants:
        raise ConfigError(f"{path}: no variants")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate variant names")
    seeds = raw.get("seeds") or [0]
    if (
        not isinstance(seeds, list)
        or not all(isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{path}: seeds must be a list of distinct integers")  # fmt: skip
    name = path_segment(str(raw.get("name") or Path(path).stem), f"{path}: ablation")
    match, multiple = raw.get("match", "none"), raw.get("match_multiple", 8)
    if match not in MATCHES:
        raise ConfigError(f"{path}: match: {match!r}: choose {', '.join(MATCHES)}")
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise ConfigError(f"{path}: match_multiple={multiple!r}: must be an integer >= 1")
    for v in variants:
        run_name(v.name, 0)  # a variant's name is part of its runs' directory names
    ablation = Ablation(
        name=name, base=base, variants=variants,
        seeds=tuple(seeds), baseline=str(raw.get("baseline") or names[0]),
        reference=raw.get("reference", True), description=str(raw.get("description") or ""), raw=raw,
        source=source, tune=_tune_spec(raw.get("tune"), path),
        launcher=slurm_config(raw.get("launcher"), launching, str(path)), match=match,
        match_multiple=multiple, **extra,
    )  # fmt: skip
    no_baseline = ablation.baseline not in names and ConfigError(
        f"{path}: baseline {ablation.baseline!r} is not a variant ({', '.join(names)})"
    )
    if no_baseline and ablation.match != "none":  # matching sizes to it: first
        raise no_baseline
    if ablation.tune:
        for v in variants:  # every variant's search is valid before anything runs
            ablation.tune_sweep(v)
    seen: dict[str, str] = {}
    for v in variants:  # every run's config is valid and distinct before anything starts
        identity = experiment_identity(ablation.experiment(v, ablation.seeds[0]).to_dict())
        if identity in seen:
            raise ConfigError(
                f"{path}: variants {seen[identity]!r} and {v.name!r} are the same experiment"
            )
        seen[identity] = v.name
    if no_baseline:
        raise no_baseline
    return ablation


def _tune_spec(spec: Any, path: str | Path) -> dict[str, Any] | None:
    if spec is None:
        return None
    check_mapping(spec, TUNE_KEYS, f"{path}: tune:", "tune")
    if not isinstance(spec.get("overrides") or [], list):
        raise ConfigError(f"{path}: tune.overrides: a list of key=value")
    return spec


def tune(
    ablation: Ablation, root: AblationDir, progress: bool = True, launcher: str = "local"
) -> dict[str, dict[str, Any]]:
    """Each variant's own search (resumable: the studies live in runs/<ablation>/tune/study.db),
    here one after another or on SLURM as one array of a task per variant (waited for);
    variant -> {params, value, trials, study}, also written to runs/<ablation>/tuned.json."""
    from optuna.trial import TrialState

    from smollm.sweep import load_study, open_study, optimize

    url = _tune_url(root)
    root.tune.mkdir(parents=True, exist_ok=True)
    for variant in ablation.variants:  # every study made here, once: searches started together
        open_study(ablation.tune_sweep(variant), url)  # would race to create Optuna's tables
    if launcher == "slurm":
        _tune_on_slurm(ablation, root, progress)
    out = {}
    for variant in ablation.variants:
        sweep = ablation.tune_sweep(variant)
        if launcher == "local":
            print(f"[tune {variant.name}] {sweep.n_trials} trials", file=sys.stderr, flush=True)
            optimize(sweep, url, root.tune)
        study = load_study(sweep.name, url)
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not done:
            raise SmolError(f"tuning {variant.name}: no trial completed")
        out[variant.name] = {"params": dict(study.best_params), "value": study.best_value,
                             "trials": len(done), "study": sweep.name}  # fmt: skip
    write_json(root.tuned, out)
    return out


def _tune_url(root: AblationDir) -> str:
    return f"sqlite:///{(root.tune / 'study.db').resolve()}"


def _searched(ablation: Ablation, variant: Variant, root: AblationDir) -> bool:
    """Whether the variant's search has its n_trials finished and nothing left to run."""
    from optuna.trial import TrialState

    from smollm.sweep import load_study

    sweep = ablation.tune_sweep(variant)
    try:
        states = [
            t.state for t in load_study(sweep.name, _tune_url(root)).get_trials(deepcopy=False)
        ]
    except SmolError:  # no study yet
        return False
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    pending = any(s in (TrialState.RUNNING, TrialState.WAITING) for s in states)
    return finished >= sweep.n_trials and not pending


@dataclass(frozen=True)
class TuneSearch:
    """One variant's search of an ablation's `tune:` phase as a picklable call (a SLURM task)."""

    source: Source
    runs_root: str
    variant: str

    def __call__(self) -> None:
        from smollm.sweep import optimize

        ablation = self.source.load()
        root = AblationDir(Path(self.runs_root), ablation.name)
        variant = next(v for v in ablation.variants if v.name == self.variant)
        optimize(ablation.tune_sweep(variant), _tune_url(root), root.tune)


def _anywhere(ablation: Ablation, root: AblationDir) -> tuple[Source, str]:
    """The ablation's source and its runs' root, as absolute paths: a SLURM job may start in
    another directory."""
    return ablation.source.anywhere(), str(root.path.parent.resolve())


def _tune_on_slurm(ablation: Ablation, root: AblationDir, progress: bool) -> None:
    """Every variant's search as one SLURM array (a search still queued is not sent again);
    waited for, since the runs read its results when they start."""
    from smollm.launch import Task, queue_states, recorded_job, submit, wait_for

    dirs = {v.name: RunDir(root.tune / "workers" / v.name) for v in ablation.variants}
    live = queue_states([j for j in map(recorded_job, dirs.values()) if j])
    source, runs_root = _anywhere(ablation, root)
    tasks = [Task(v.name, dirs[v.name], TuneSearch(source, runs_root, v.name))
             for v in ablation.variants
             if recorded_job(dirs[v.name]) not in live and not _searched(ablation, v, root)]  # fmt: skip
    submitted = submit(tasks, root.tune / "slurm", ablation.launcher, f"{ablation.name}-tune")
    print(f"[slurm] {len(submitted)} variant searches submitted as one job array, "
          f"{len(live)} already queued; waiting for them", file=sys.stderr, flush=True)  # fmt: skip
    wait_for(submitted + list(live), progress)


def run_ablation(
    ablation: Ablation, runs_root: Path, progress: bool = True, workers: int = 1,
    launcher: str = "local", wait: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train every (variant, seed) not yet finished; a failure is recorded and the rest go on.

    With `workers` > 1 the runs go to that many processes, worker i on GPU i mod n; with
    `launcher="slurm"` they go out as one SLURM job array (`wait`: until it is done).
    """
    for variant in ablation.variants:  # tracking.mode=online without a key: before anything runs
        wandb_mode(ablation.experiment(variant, ablation.seeds[0]).tracking.mode)
    root = AblationDir(runs_root, ablation.name)
    root.path.mkdir(parents=True, exist_ok=True)
    write_json(root.spec, ablation.raw)
    if not root.provenance.is_file():
        from smollm.runtime import machine

        write_json(root.provenance, {
            "command": " ".join(["smol", *sys.argv[1:]]), "machine": machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        })  # fmt: skip
    t0, n = time.monotonic(), len(ablation.jobs())
    outcomes: list[dict[str, Any]] = []
    finished, before = False, _summaries(ablation, root)
    try:
        if ablation.tune:
            tune(ablation, root, progress, launcher)
        if launcher == "slurm":
            outcomes = _run_slurm(ablation, root, progress, wait)
            if not wait:  # submitted: this session's work is done, not interrupted
                finished = True
                return outcomes
        elif workers > 1 and n > 1:
            outcomes = _run_parallel(ablation, root, n, workers)
        else:
            for i in range(n):
                outcomes.append(_run_one(ablation, root, i, progress))
        if ablation.reference:
            evaluate_reference(ablation, root, progress)
        finished = True
    finally:  # an interrupted session (Ctrl-C) counts too: its time and the runs it finished
        after = _summaries(ablation, root)
        trained = sum(a is not None and a["status"] == "finished" and a != b
                      for a, b in zip(after, before, strict=True))  # fmt: skip
        _record_session(root, trained, time.monotonic() - t0, interrupted=not finished)
    return outcomes


def _summaries(ablation: Ablation, root: AblationDir) -> list[dict[str, Any] | None]:
    """Every run's summary (None: none, or unreadable), in job order."""
    out = []
    for variant, seed in ablation.jobs():
        try:
            out.append(root.run(variant.name, seed).read_summary())
        except RunDirError:
            out.append(None)
    return out


def _record_session(root: AblationDir, trained: int, seconds: float, interrupted: bool) -> None:
    """Add this invocation's wall time and the runs it finished (their summaries new) to the
    provenance, when it trained anything (an interrupted one always: it was training)."""
    if not trained and not interrupted:
        return  # a re-run that found everything finished: the record stays as it was
    prov = read_json(root.provenance)
    session = {"runs_trained": trained, "wall_s": round(seconds, 1)}
    prov.setdefault("sessions", []).append(
        {**session, **({"interrupted": True} if interrupted else {})}
    )
    write_json(root.provenance, prov)


def _run_one(ablation: Ablation, root: AblationDir, index: int, progress: bool) -> dict[str, Any]:
    """Train the index-th (variant, seed) of the ablation; its outcome row."""
    from smollm.train import train

    jobs = ablation.jobs()
    variant, seed = jobs[index]
    run = root.run(variant.name, seed)
    print(f"[{index + 1}/{len(jobs)}] {run.name}", file=sys.stderr, flush=True)
    try:
        before = run.read_summary()
    except RunDirError:
        before = None
    try:
        summary = train(_experiment(ablation, root, variant, seed), run.path, progress,
                        replace="if-changed")  # fmt: skip
    except RunDirBusy as e:  # another process owns this run: its records are not ours to write
        summary = {"status": "busy", "error": str(e)}
    except (SmolError, RuntimeError, ValueError, OSError) as e:  # recorded, the ladder goes on
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        if not isinstance(e, SmolError):
            run.path.mkdir(parents=True, exist_ok=True)
            run.error_log.write_text(traceback.format_exc())
        _record_failure(run, summary["error"])
    return {
        "run": run.name,
        "variant": variant.name,
        "seed": seed,
        "trained": summary != before,  # a finished run hands back its summary unchanged
        **{k: summary.get(k) for k in ("status", "step", "val_loss", "val_bpb", "error")},
    }


@dataclass(frozen=True)
class AblationRun:
    """The index-th (variant, seed) of an ablation as a picklable call: what a SLURM array task
    runs (it reloads the file, as a local worker does)."""

    source: Source
    runs_root: str
    index: int

    def __call__(self) -> dict[str, Any]:
        ablation = self.source.load()
        root = AblationDir(Path(self.runs_root), ablation.name)
        return _run_one(ablation, root, self.index, progress=False)


def _experiment(ablation: Ablation, root: AblationDir, variant: Variant, seed: int):
    """A run's experiment as it trains: with its variant's tuned values, once tuning is done."""
    tuned = (read_json(root.tuned) if root.tuned.is_file() else {}).get(variant.name, {})
    return ablation.experiment(variant, seed, tuned.get("params"))


def _done(ablation: Ablation, root: AblationDir, index: int) -> bool:
    """Whether the index-th run is finished as the file now says (its vocabulary size and the
    digest of its init_from weights, resolved when it starts, aside)."""
    variant, seed = ablation.jobs()[index]
    run = root.run(variant.name, seed)
    try:
        summary = run.read_summary()
        changes = run.experiment_changes(_experiment(ablation, root, variant, seed).to_dict())
    except RunDirError:
        return False
    changes = [c for c in changes if not c.startswith(("model.vocab_size:", "train.init_hash:"))]
    return summary is not None and summary["status"] == "finished" and not changes


def _run_slurm(ablation: Ablation, root: AblationDir, progress: bool, wait: bool) -> list[dict]:
    """The runs not finished and not already queued as one SLURM array; then, when asked, wait
    for every run's job and read the outcomes from the run directories."""
    from smollm.launch import Task, queue_states, recorded_job, submit, wait_for

    jobs = ablation.jobs()
    recorded = {i: recorded_job(root.run(v.name, s)) for i, (v, s) in enumerate(jobs)}
    live = queue_states([j for j in recorded.values() if j])
    todo = [i for i in range(len(jobs)) if not _done(ablation, root, i) and recorded[i] not in live]
    source, runs_root = _anywhere(ablation, root)
    runs = [root.run(jobs[i][0].name, jobs[i][1]) for i in todo]
    tasks = [
        Task(run.name, run, AblationRun(source, runs_root, i))
        for run, i in zip(runs, todo, strict=True)
    ]
    submitted = submit(tasks, root.slurm, ablation.launcher, ablation.name)
    print(f"[slurm] {len(submitted)} runs submitted as one job array"
          + (f" ({submitted[0].split('_')[0]})" if submitted else "")
          + f", {len(live)} already queued, {len(jobs) - len(todo) - len(live)} finished",
          file=sys.stderr, flush=True)  # fmt: skip
    if wait:
        wait_for(submitted + list(live), progress)
    return [_slurm_outcome(ablation, root, i, i in todo, wait) for i in range(len(jobs))]


def _slurm_outcome(ablation: Ablation, root: AblationDir, index: int, sent: bool, waited: bool):
    """A run's outcome row from its directory; a failed job names its log."""
    variant, seed = ablation.jobs()[index]
    run = root.run(variant.name, seed)
    try:
        summary = run.read_summary() or {}
    except RunDirError as e:
        summary = {"status": "failed", "error": str(e)}
    status = summary.get("status") or ("failed" if waited else "submitted")
    if not waited and status != "finished":
        status = "submitted" if sent else "queued"
    error = summary.get("error") or (
        "its SLURM job left no summary" if status == "failed" else None
    )
    if status not in ("finished", "submitted", "queued"):
        error = f"{error}; log: {run.slurm / 'stderr'}"
    return {"run": run.name, "variant": variant.name, "seed": seed, "trained": sent,
            **{k: summary.get(k) for k in ("step", "val_loss", "val_bpb")},
            "status": status, "error": error}  # fmt: skip


def _record_failure(run: RunDir, error: str) -> None:
    """Mark the run failed, unless train() already wrote the richer record (failed, diverged)."""
    try:
        existing = run.read_summary()
    except RunDirError:
        existing = None  # unreadable: replaced by the failure record
    if existing is None or existing["status"] not in ("failed", "diverged"):
        run.write_summary("failed", error=error)


def _worker(source: Source, root: str, todo, done, threads: int) -> None:
    """A worker process: take job indices from `todo` until it is empty, put outcomes on `done`."""
    import queue

    import torch

    torch.set_num_threads(threads)
    ablation = source.load()
    ablation_dir = AblationDir(Path(root), ablation.name)
    while True:
        try:
            index = todo.get_nowait()
        except queue.Empty:
            return
        done.put((index, _run_one(ablation, ablation_dir, index, progress=False)))


def _run_parallel(
    ablation: Ablation, root: AblationDir, n_jobs: int, workers: int
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
    args = (ablation.source, str(root.path.parent), todo, done, threads)
    procs = start_workers(_worker, [args] * workers)
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
    for i, (variant, seed) in enumerate(ablation.jobs()):  # a job whose worker died silently
        if i not in outcomes:
            error = f"its worker process exited (codes {[p.exitcode for p in procs]})"
            outcomes[i] = {"run": root.run(variant.name, seed).name, "variant": variant.name,
                           "seed": seed, "status": "failed", "error": error}  # fmt: skip
            _record_failure(root.run(variant.name, seed), error)
    return [outcomes[i] for i in range(n_jobs)]


def evaluate_reference(ablation: Ablation, root: AblationDir, progress: bool) -> dict[str, Any]:
    """Pretrained SmolLM2-135M (packaged weights) on the same validation documents, once."""
    ref = root.reference
    exp = ablation.experiment(ablation.variants[0], ablation.seeds[0])
    tasks = {"tasks": list(exp.train.eval_tasks), "limit": exp.train.eval_limit}
    try:
        done = ref.read_summary()
    except RunDirError:
        done = None
    if (
        done is not None
        and done["status"] == "finished"
        and done.get("eval_items", {"tasks": [], "limit": 0}) == tasks
    ):
        return done
    from smollm import assets
    from smollm.data import evaluate, prepare
    from smollm.evals import Downstream
    from smollm.hf import load_pretrained

    data = DataConfig(
        **{**exp.data.__dict__, "tokenizer": "smollm2"}
    )  # same documents, SmolLM2's tokenizer
    cache, tok = prepare(data, progress=progress)
    model = load_pretrained(str(assets.packaged_gguf()))
    # the downstream tasks on the same items as the runs (their first eval_limit of each task)
    scores = (
        Downstream(tasks["tasks"], tasks["limit"], tok).scores(model) if tasks["tasks"] else None
    )
    # the same text as the runs' evaluations: all of it, or as many SmolLM2-tokenised blocks
    n_blocks = (
        max(1, exp.train.eval_blocks * exp.data.seq_len // data.seq_len)
        if exp.train.eval_blocks
        else None
    )
    result = evaluate(model, cache, data.seq_len, batch_size=4, max_blocks=n_blocks)
    return ref.write_summary(
        "finished", variant="SmolLM2-135M-Instruct (pretrained, Q4_1 GGUF)", tokenizer="smollm2",
        parameters=model.num_parameters(), non_embedding_parameters=model.num_parameters(non_embedding=True),
        val_loss=result.loss, val_bpb=result.bits_per_byte, val_tokens=result.tokens,
        **({"eval": scores} if scores else {}), eval_items=tasks,
    )  # fmt: skip
