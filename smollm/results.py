"""Result tables, rebuilt from run directories and studies alone (byte-identical on rebuild).

Ablations (`smol results`): results/<ablation>/summary.csv and summary.md, per variant the mean ±
95% CI over seeds of the final validation loss and bits per byte and the paired difference from
the baseline (paired by seed); loss_curves.png, validation loss against tokens (mean line, min-max
band over seeds). Sweeps (`smol sweep show`): results/sweeps/<name>/ with the trials, importances
and Optuna's plots. Both go through the same CSV, provenance and figure writers below.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from smollm.config import SmolError
from smollm.rundir import AblationDir, RunDir, RunDirError, code_versions, read_json


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% Student-t interval (None with one value)."""
    from scipy import stats

    if not values:
        return math.nan, None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    t = float(stats.t.ppf(0.975, len(values) - 1))
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


def _run_record(run: RunDir) -> dict[str, Any]:
    """A run's summary and validation curve; a missing or unreadable run says so, never crashes."""
    try:
        summary = run.read_summary() or {"status": "missing"}
        curve = [(r["tokens"], r["val/loss"]) for r in run.rows("metrics") if "val/loss" in r]
    except (RunDirError, KeyError) as e:
        return {"summary": {"status": "unreadable", "error": str(e)}, "curve": []}
    needed = ("val_loss", "val_bpb", "tokens")
    if summary["status"] == "finished" and not all(
        isinstance(summary.get(k), (int, float)) for k in needed
    ):
        summary = {
            "status": "unreadable",
            "error": f"{run.summary_path}: lacks {', '.join(needed)}",
        }
    return {"summary": summary, "curve": curve}


def load_runs(root: AblationDir) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> {summary, curve}, from runs/<ablation>/<variant>-s<seed>/."""
    ablation = root.read_spec()
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for spec in ablation["variants"]:
        name = spec if isinstance(spec, str) else spec.get("name", spec["preset"])
        runs[name] = {
            int(seed): _run_record(root.run(name, int(seed)))
            for seed in ablation.get("seeds") or [0]
        }
    return runs


def _fmt(m: float, ci: float | None, digits: int = 4) -> str:
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def summary_rows(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    """One row per variant: sizes, throughput, final val loss/bpb and the paired delta to the baseline."""
    base = {
        s: r["summary"]
        for s, r in runs.get(baseline, {}).items()
        if r["summary"].get("status") == "finished"
    }
    rows = []
    for name, seeds in runs.items():
        ok = {s: r["summary"] for s, r in seeds.items() if r["summary"].get("status") == "finished"}
        first = next(iter(ok.values()), {})
        loss = mean_ci([s["val_loss"] for s in ok.values()])
        bpb = mean_ci([s["val_bpb"] for s in ok.values()])
        paired = [ok[s]["val_bpb"] - base[s]["val_bpb"] for s in ok if s in base]
        delta = mean_ci(paired) if name != baseline else (0.0, None)
        rows.append({
            "variant": name, "seeds": f"{len(ok)}/{len(seeds)}", "parameters": first.get("parameters"),
            "non_embedding_parameters": first.get("non_embedding_parameters"), "flops_per_token": first.get("flops_per_token"),
            "tokens": first.get("tokens"), "tokens_per_s": round(statistics.fmean([s["tokens_per_s"] for s in ok.values() if s.get("tokens_per_s")]), 0) if ok else None,
            "val_loss": loss[0], "val_loss_ci95": loss[1], "val_bpb": bpb[0], "val_bpb_ci95": bpb[1],
            "delta_bpb_vs_baseline": delta[0], "delta_bpb_ci95": delta[1],
            "failed": "; ".join(f"s{s}: {r['summary'].get('status')}" for s, r in seeds.items() if r["summary"].get("status") != "finished"),
        })  # fmt: skip
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path, digits: int | None = 6) -> None:
    """Rows as CSV, None empty; floats with `digits` decimals (None: as Python prints them)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({
            k: (f"{v:.{digits}f}" if isinstance(v, float) and digits is not None else ("" if v is None else v))
            for k, v in row.items()
        })  # fmt: skip
    path.write_text(buf.getvalue())


def write_markdown(
    rows: list[dict[str, Any]], reference: dict | None, meta: dict[str, Any], path: Path
) -> None:
    lines = [
        f"# Ablation `{meta['name']}`",
        "",
        meta.get("description", "").strip(),
        "",
        f"**Provenance.** {meta['provenance']}",
        "",
    ]
    lines += [
        f"Final validation loss and bits per byte: mean ± 95% CI (t) over seeds; Δ bpb is the paired difference from `{meta['baseline']}` (same seed). Lower is better.",
        "",
        "| variant | seeds | params | non-emb params | FLOPs/token | tokens | tokens/s | val loss | val bits/byte | Δ bpb vs baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        num = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "—"  # noqa: E731
        delta = (
            "baseline"
            if r["variant"] == meta["baseline"]
            else _fmt(r["delta_bpb_vs_baseline"], r["delta_bpb_ci95"])
        )
        fail = f" ({r['failed']})" if r["failed"] else ""
        lines.append(
            f"| {r['variant']}{fail} | {r['seeds']} | {num(r['parameters'])} | {num(r['non_embedding_parameters'])} | {num(r['flops_per_token'])} | {num(r['tokens'])} | {num(r['tokens_per_s'])} | {_fmt(r['val_loss'], r['val_loss_ci95'])} | {_fmt(r['val_bpb'], r['val_bpb_ci95'])} | {delta} |"
        )
    if reference:
        lines.append(
            f"| *reference: {reference['variant']}* | — | {reference['parameters']:,} | {reference['non_embedding_parameters']:,} | — | (pretrained) | — | {reference['val_loss']:.4f} (SmolLM2 tokenizer) | {reference['val_bpb']:.4f} | — |"
        )
    lines += ["", "![validation loss](loss_curves.png)", ""]
    path.write_text("\n".join(lines))


def pyplot():
    """matplotlib.pyplot on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, **kwargs: Any) -> None:
    """PNG without a timestamp or software tag, so a rebuild gives the same bytes."""
    fig.savefig(path, metadata={"Software": None}, **kwargs)
    pyplot().close(fig)


def plot_curves(runs: dict[str, dict[int, dict[str, Any]]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, seeds in runs.items():
        curves = [r["curve"] for r in seeds.values() if r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        x = [t for t, _ in curves[0][:n]]
        ys = [[v for _, v in c[:n]] for c in curves]
        mean = [statistics.fmean(col) for col in zip(*ys, strict=True)]
        ax.plot(x, mean, label=name, linewidth=1.5)
        ax.fill_between(
            x,
            [min(col) for col in zip(*ys, strict=True)],
            [max(col) for col in zip(*ys, strict=True)],
            alpha=0.2,
        )
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def machine_line(m: dict[str, Any]) -> str:
    """'CPU: AMD EPYC (2 threads, torch 2.13.0+cpu)' from a `runtime.machine()` record."""
    return f"{m.get('device', '?')} ({m.get('threads', '?')} threads, torch {m.get('torch', '?')})"


def provenance(root: AblationDir) -> str:
    prov = read_json(root.provenance) if root.provenance.is_file() else {}
    return (
        f"Produced by `{prov.get('command', 'smol run ablation')}` starting {prov.get('started', '?')} on {machine_line(prov.get('machine', {}))}, "
        f"code at git {code_versions(root.path.iterdir())}; "
        f"tables rebuilt from the run directories in `runs/{root.name}/` by `smol results {root.name}`."
    )


def build_results(ablation: str, runs_root: Path, out_root: Path) -> Path:
    """Write results/<ablation>/{summary.md, summary.csv, loss_curves.png} and the index."""
    root = AblationDir(runs_root, ablation)
    if not root.exists():
        raise SmolError(f"no ablation runs in {root.path}; run `smol run ablation` first")
    spec = root.read_spec()
    runs = load_runs(root)
    baseline = str(spec.get("baseline") or next(iter(runs)))
    rows = summary_rows(runs, baseline)
    out = out_root / ablation
    out.mkdir(parents=True, exist_ok=True)
    try:
        reference = root.reference.read_summary()
    except RunDirError:
        reference = None
    write_csv(rows, out / "summary.csv")
    meta = {
        "name": ablation,
        "baseline": baseline,
        "description": spec.get("description", ""),
        "provenance": provenance(root),
    }
    write_markdown(rows, reference, meta, out / "summary.md")
    plot_curves(
        runs,
        out / "loss_curves.png",
        f"{ablation}: validation loss (mean, min-max band over seeds)",
    )
    write_index(out_root)
    return out


def write_index(out_root: Path) -> None:
    """results/README.md: one line per ablation (and sweep) directory."""
    lines = [
        "# Results",
        "",
        "Generated by `smol results`; each table says how and where its runs were produced.",
        "",
    ]
    for d in sorted(p for p in out_root.iterdir() if p.is_dir() and (p / "summary.md").is_file()):
        first = (d / "summary.md").read_text().splitlines()[0].lstrip("# ")
        lines.append(f"- [{d.name}]({d.name}/summary.md): {first}")
    sweeps = out_root / "sweeps"
    if sweeps.is_dir():
        for d in sorted(p for p in sweeps.iterdir() if (p / "summary.md").is_file()):
            lines.append(
                f"- [sweeps/{d.name}](sweeps/{d.name}/summary.md): Optuna study `{d.name}`"
            )
    (out_root / "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- sweeps


def _sweep_provenance(study, url: str, name: str) -> str:
    """Where and with which code the trials ran (from their run directories)."""
    from smollm.runtime import machine
    from smollm.sweep import display_url

    versions = code_versions(
        Path(t.user_attrs["run_dir"]) for t in study.trials if t.user_attrs.get("run_dir")
    )
    return (
        f"**Provenance.** Optuna study `{name}` in `{display_url(url)}`, trials run by `smol sweep` on "
        f"{machine_line(machine())}, code at git {versions}; rebuilt by `smol sweep show {name}`."
    )


def write_sweep_results(name: str, url: str, out_root: Path) -> Path:
    """results/sweeps/<name>/: summary.md, trials.csv, importances and Optuna's plots."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    from smollm.sweep import load_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = load_study(name, url)
    out = out_root / "sweeps" / name
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in study.trials for k in t.params})
    rows = [
        {"trial": t.number, "state": t.state.name, "value": t.value, **{k: t.params.get(k) for k in keys},
         "last_step": t.last_step, "run_dir": t.user_attrs.get("run_dir", "")}
        for t in study.trials
    ]  # fmt: skip
    write_csv(rows, out / "trials.csv", digits=None)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    lines = [f"# Sweep `{name}`", "", _sweep_provenance(study, url, name), ""]
    counts = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    lines.append("Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v) + ".")
    if complete:
        best = study.best_trial
        lines += ["", f"**Best** (trial {best.number}, objective {best.value:.4f}): "
                  + ", ".join(f"`{k}={v}`" for k, v in best.params.items())]  # fmt: skip
    if len(complete) >= 2 and len(keys) >= 2:
        importances = optuna.importance.get_param_importances(study)
        lines += ["", "| parameter | importance (fANOVA) |", "|---|---:|",
                  *[f"| {k} | {v:.3f} |" for k, v in importances.items()]]  # fmt: skip
    lines += ["", "| trial | state | objective | " + " | ".join(keys) + " |",
              "|---|---|---:|" + "---:|" * len(keys)]  # fmt: skip
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "—"
        lines.append(
            f"| {r['trial']} | {r['state'].lower()} | {value} | "
            + " | ".join(str(r[k]) for k in keys)
            + " |"
        )
    if complete:
        lines += [
            line
            for f in _sweep_plots(study, len(keys), len(complete), out)
            for line in ("", f"![{f}]({f})")
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out


def _sweep_plots(study, n_params: int, n_complete: int, out: Path) -> list[str]:
    """Optuna's plots of the study as PNGs; their file names."""
    import optuna.visualization.matplotlib as vis

    plt = pyplot()
    plots = {"optimization_history.png": vis.plot_optimization_history, "slice.png": vis.plot_slice}
    if n_params >= 2:
        plots["contour.png"] = vis.plot_contour
    if n_complete >= 2 and n_params >= 2:
        plots["importances.png"] = vis.plot_param_importances
    for filename, plot in plots.items():
        plot(study)
        fig = plt.gcf()
        fig.set_size_inches(8, 5)
        save_figure(fig, out / filename, dpi=100, bbox_inches="tight")
        plt.close("all")
    return list(plots)
