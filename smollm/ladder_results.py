"""A ladder's tables, rebuilt from its run directories alone (byte-identical on rebuild): the ladder
section of `smol results`, on the ablation tables' machinery (smollm.results) and the fits of
smollm.scaling.

results/<ladder>/: summary.md (per-rung table, fits, compute multipliers, trends, extrapolation,
what it resolves, provenance), summary.csv (one row per rung and variant), fits.csv (one row per
variant), scaling.png (bits per byte against compute) and multiplier.png.

FLOP accounting: a run's compute C is its training tokens times the FLOPs per token that `smol
train` counts (PaLM's: 6 x (non-embedding parameters + output layer) + 12 x layers x width x
context for attention scores), C = 6·N·D with N the matmul parameters, attention added.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from smollm.config import SmolError, flops_per_token
from smollm.results import (
    _fmt,
    _p,
    load_runs,
    machine_line,
    pyplot,
    read_csv_typed,
    save_figure,
    summary_rows,
    wall_time,
    write_csv,
    write_index,
)
from smollm.rundir import LadderDir, code_versions, read_json

N_BOOT = 1000  # seed-bootstrap resamples of every fit (fixed seed: a rebuild gives the same bytes)


def load_ladder_runs(root: LadderDir) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """rung -> variant -> seed -> {summary, curve}, rungs in the ladder's order."""
    spec = root.read_spec()
    out = {}
    for rung in spec["rungs"]:
        ablation = root.rung(str(rung["name"]))
        if ablation.exists():
            out[str(rung["name"])] = load_runs(ablation)
    return out


def _finished(record: dict[str, Any]) -> dict[str, Any] | None:
    summary = record["summary"]
    return summary if summary.get("status") == "finished" else None


def compute_of(summary: dict[str, Any]) -> float:
    """A finished run's training compute: tokens x FLOPs per token (see the module's note)."""
    return float(summary["tokens"]) * float(summary["flops_per_token"])


def fit_inputs(runs: dict[str, dict[str, dict[int, dict[str, Any]]]], variants: list[str]):
    """(rungs, seeds, compute (V, R), bpb (V, R, S), loss (V, R, S)) over the rungs where every
    variant finished, and the seeds finished for every variant at every one of those rungs."""
    rungs = [r for r, by in runs.items()
             if all(any(_finished(x) for x in by.get(v, {}).values()) for v in variants)]  # fmt: skip
    seeds = sorted(set.intersection(*[
        {s for s, x in runs[r][v].items() if _finished(x)} for r in rungs for v in variants
    ])) if rungs else []  # fmt: skip
    summary = lambda v, r, s: runs[r][v][s]["summary"]  # noqa: E731
    compute = np.array([[compute_of(summary(v, r, seeds[0])) for r in rungs] for v in variants]) if seeds else None  # fmt: skip
    values = {
        key: np.array([[[summary(v, r, s)[key] for s in seeds] for r in rungs] for v in variants])
        for key in ("val_bpb", "val_loss")
    } if seeds else {}  # fmt: skip
    return rungs, seeds, compute, values.get("val_bpb"), values.get("val_loss")


def target_compute(root: LadderDir, variants: list[str], vocab: int) -> tuple[np.ndarray, dict]:
    """Each variant's compute at the ladder's target (its shape, context and budget, the runs'
    vocabulary), and a description of the target."""
    from smollm.ladder import ladder_from_mapping

    ladder = ladder_from_mapping(root.read_spec(), str(root.spec))
    target = ladder.target()
    by_name = {v.name: v for v in target.variants}
    out, first = [], None
    for name in variants:
        exp = target.experiment(by_name[name], target.seeds[0])
        model = dataclasses.replace(exp.model, vocab_size=vocab)
        tokens = exp.train.max_steps * exp.train.batch_size * exp.data.seq_len
        out.append(tokens * flops_per_token(model, exp.data.seq_len))
        first = first or {"model": model, "tokens": tokens, "seq_len": exp.data.seq_len}
    spec = root.read_spec().get("target") or {}
    first["name"] = str(spec.get("preset", "smollm2-135m"))
    return np.array(out, float), first


def provenance(root: LadderDir, rungs: list[str]) -> str:
    """Where, when and with which code the ladder ran, from its rungs' records."""
    provs = [read_json(root.rung(r).provenance) for r in rungs if root.rung(r).provenance.is_file()]
    first = min(provs, key=lambda p: p.get("started", "")) if provs else {}
    sessions = [s for p in provs for s in p.get("sessions") or []]
    dirs = [d for r in rungs for d in root.rung(r).path.iterdir() if d.is_dir()]
    timing = (
        wall_time(sessions).replace(" in one session", "").replace(" sessions", " rung sessions")
    )
    return (
        f"Produced by `{first.get('command', 'smol run ladder')}` starting {first.get('started', '?')} on "
        f"{machine_line(first.get('machine', {}))}, code at git {code_versions(dirs)}{timing}; tables rebuilt "
        f"from the run directories in `runs/{root.name}/` by `smol results {root.name}`."
    )  # fmt: skip


def _union(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every key any row has (missing: None), so they share one CSV header."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def _flat(key: str, part: dict | None) -> dict[str, float | None]:
    """A {value, lo, hi} as three columns: key, key_lo, key_hi (None when absent); `_part` reads
    them back."""
    return {f"{key}{end}": None if part is None else part[k]
            for end, k in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))}  # fmt: skip


def rung_rows(runs, baseline: str, analysis: dict | None, fitted: list[str], variants: list[str]):
    """One row per rung and variant: the ablation table's columns, the run's compute and, where
    the rung is in the fit, the compute multiplier vs the baseline with its interval."""
    rows = []
    for rung, by_variant in runs.items():
        for row in summary_rows(by_variant, baseline):
            ok = [x["summary"] for x in by_variant[row["variant"]].values() if _finished(x)]
            mult = None
            if analysis and rung in fitted and row["variant"] != baseline:
                vs = analysis["vs"][variants.index(row["variant"])]
                mult = vs["multiplier"][fitted.index(rung)]
            rows.append({"rung": rung, **row, "compute": compute_of(ok[0]) if ok else None,
                         **_flat("multiplier", mult)})  # fmt: skip
    return _union(rows)


def fit_rows(analysis: dict, loss_analysis: dict, variants: list[str], baseline: str) -> list[dict]:
    """One row per variant: its law (bpb and loss) and, against the baseline, the fitted
    multiplier at the largest rung, the trend of the gap, the extrapolation to the target."""
    rows = []
    for i, name in enumerate(variants):
        row: dict[str, Any] = {"variant": name}
        for unit, a in (("bpb", analysis), ("loss", loss_analysis)):
            for k, v in a["laws"][i].items():
                row.update(_flat(f"{k}_{unit}", v))
        vs = analysis["vs"].get(i)
        for key in ("fit_multiplier", "slope", "target_delta", "target_multiplier"):
            row.update(_flat(key, (vs or {}).get(key)))
        row["trend"] = vs["trend"] if vs else "baseline"
        row["verdict"] = vs["verdict"] if vs else "baseline"
        rows.append(row)
    return rows


def _sci(x: float | None) -> str:
    """1.23e12 -> '1.2e12'."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.2g}".replace("e+", "e")


def _ratio(d: dict | None) -> str:
    """A multiplier with its interval: '0.62× (0.51–0.75)'."""
    if d is None or math.isnan(d["value"]):
        return "—"
    if math.isinf(d["value"]):  # the variant goes below the baseline's fitted floor E
        return "∞ (beyond the baseline's floor)"
    if math.isnan(d["lo"]):
        return f"{d['value']:.3g}× (—)"
    return f"{d['value']:.3g}× ({d['lo']:.3g}–{d['hi']:.3g})"


def _signed(d: dict | None, digits: int = 4) -> str:
    if d is None:
        return "—"
    ci = "" if math.isnan(d["lo"]) else f" ({d['lo']:+.{digits}f} to {d['hi']:+.{digits}f})"
    return f"{d['value']:+.{digits}f}{ci}"


def _rung_table(rows: list[dict], baseline: str) -> list[str]:
    num = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "—"  # noqa: E731
    lines = [
        "| rung | variant | seeds | params (non-emb.) | FLOPs/token | tokens | compute (FLOPs) | lr | val bits/byte (sd) | "
        f"Δ bpb vs {baseline} | p (Holm) | resolved | compute multiplier (95% CI) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|",
    ]  # fmt: skip
    for r in rows:
        base = r["variant"] == baseline
        name = r["variant"] + (f" ({r['failed']})" if r["failed"] else "")
        sd = f" ({r['val_bpb_sd']:.4f})" if r["val_bpb_sd"] is not None else ""
        lr = f"{r['lr']:.3g}" if r["lr"] else "—"
        delta = "baseline" if base else _fmt(r["delta_bpb_vs_baseline"], r["delta_bpb_ci95"])
        p = "—" if base else _p(r["delta_bpb_p_holm"])
        mark = "✓" if not base and r["resolved"] else ""
        multiplier = "—" if base or r["multiplier"] is None else _ratio(_part(r, "multiplier"))
        lines.append(
            f"| {r['rung']} | {name} | {r['seeds']} | {num(r['parameters'])} ({num(r['non_embedding_parameters'])}) | "
            f"{num(r['flops_per_token'])} | {num(r['tokens'])} | {_sci(r['compute'])} | {lr} | "
            f"{_fmt(r['val_bpb'], r['val_bpb_ci95'])}{sd} | {delta} | {p} | {mark} | {multiplier} |"
        )  # fmt: skip
    return lines


def _fit_section(fits: list[dict], meta: dict) -> list[str]:
    """The laws, then each variant against the baseline: multiplier, trend, extrapolation."""
    a = meta["analysis"]
    iv = lambda r, k, d=3: f"{r[k]:.{d}f} ({r[k + '_lo']:.{d}f}–{r[k + '_hi']:.{d}f})"  # noqa: E731
    base, rungs = meta["baseline"], meta["fitted"]
    lines = [
        "## Fits", "",
        f"Per variant, L(C) = E + A·(C/c0)^-α fitted by least squares (scipy) to the mean over seeds at each of the rungs "
        f"{', '.join(rungs)}, c0 = {_sci(a['c0'])} FLOPs (`{base}`'s smallest run). 95% intervals from {a['n_boot']:,} "
        f"seed-bootstrap resamples ({a['n_seeds']} seeds, drawn per rung, paired across variants), t-scaled "
        "(`smollm/scaling.py` says why).", "",
        "| variant | E (bits/byte) | A (bits/byte) | α | E (loss, nats/token) |", "|---|---:|---:|---:|---:|",
        *[f"| {r['variant']} | {iv(r, 'E_bpb')} | {iv(r, 'A_bpb')} | {iv(r, 'alpha_bpb')} | {iv(r, 'E_loss')} |"
          for r in fits],
    ]  # fmt: skip
    return lines


def _against(fits: list[dict], rows: list[dict], meta: dict) -> list[str]:
    base, t = meta["baseline"], meta["target"]
    top = meta["fitted"][-1]
    lines = [
        "", f"## Against `{base}`", "",
        f"The **compute multiplier** of a variant is the compute `{base}` needs to reach the variant's loss, over the "
        f"variant's compute (from `{base}`'s fitted law): 0.5× means the variant is worth half its compute, `{base}` gets "
        "there with half; above 1× it saves compute. Per rung it uses the variant's measured loss; the fitted one, "
        f"both laws at the largest rung (`{top}`). The **trend** is the least-squares slope of the paired Δ bpb against "
        "log10 compute (bits per byte per decade): `grows` when the gap widens with scale, `shrinks` when it closes. "
        "Intervals are per comparison (not corrected across variants).", "",
        f"| variant | Δ bpb per rung ({' → '.join(meta['fitted'])}) | multiplier at `{top}` (fit) | verdict | "
        "slope of Δ (bpb/decade) | trend |", "|---|---|---:|---|---:|---|",
    ]  # fmt: skip
    for f in fits:
        if f["variant"] == base:
            continue
        deltas = [f"{r['delta_bpb_vs_baseline']:+.3f}" for r in rows
                  if r["variant"] == f["variant"] and r["rung"] in meta["fitted"]]  # fmt: skip
        lines.append(
            f"| {f['variant']} | {' → '.join(deltas)} | {_ratio(_part(f, 'fit_multiplier'))} | {f['verdict']} | "
            f"{_signed(_part(f, 'slope'))} | {f['trend']} |"
        )  # fmt: skip
    lines += [
        "", f"### Extrapolated to `{t['name']}` (an extrapolation)", "",
        f"The target: the `{t['name']}` shape ({t['model'].dim} wide, {t['model'].n_layers} layers) with each variant "
        f"matched as on the ladder, context {t['seq_len']:,}, {t['tokens']:,} tokens, the runs' vocabulary "
        f"({t['model'].vocab_size:,}): C = {_sci(meta['target_c'])} FLOPs for `{base}`, {meta['reach']:,.0f}× the "
        "largest rung's compute. The intervals count seed noise only; that both laws hold over that range is assumed, "
        "not tested, so read them as lower bounds on the uncertainty.", "",
        "| variant | Δ bpb at the target (95% interval) | multiplier at the target (95% interval) |", "|---|---:|---:|",
        *[f"| {f['variant']} | {_signed(_part(f, 'target_delta'))} | {_ratio(_part(f, 'target_multiplier'))} |"
          for f in fits if f["variant"] != base],
    ]  # fmt: skip
    return lines


def _part(row: dict, key: str) -> dict | None:
    if row.get(key) is None:
        return None
    return {"value": row[key], "lo": row[f"{key}_lo"], "hi": row[f"{key}_hi"]}


def _trend_words(trend: str) -> str:
    if trend == "not resolved":
        return "whether the gap grows or shrinks with scale is not resolved"
    return f"the gap {trend.removeprefix('resolved: ')} with scale (resolved)"


def _resolves(fits: list[dict], rows: list[dict], meta: dict) -> list[str]:
    """What the ladder resolves, in words, variant by variant."""
    base, match = meta["baseline"], meta["match"]
    matched = {
        "params": "at matched non-embedding parameters",
        "flops": "at matched FLOPs per token",
    }
    out = []
    for f in fits:
        if f["variant"] == base:
            continue
        mine = [r for r in rows if r["variant"] == f["variant"] and r["rung"] in meta["fitted"]]
        worse = sum(r["resolved"] and r["delta_bpb_vs_baseline"] > 0 for r in mine)
        better = sum(r["resolved"] and r["delta_bpb_vs_baseline"] < 0 for r in mine)
        m, s = _part(f, "fit_multiplier"), _part(f, "slope")
        out.append(
            f"`{f['variant']}` vs `{base}` {matched.get(match, '(sizes not matched)')}: worse at {worse} and better at "
            f"{better} of {len(mine)} rungs (resolved, Holm within each rung); at the largest rung it is worth "
            f"{_ratio(m)} of `{base}`'s compute ({f['verdict']}); {_trend_words(f['trend'])} "
            f"({_signed(s)} bpb per decade of compute)."
        )  # fmt: skip
    return ["", "**What this resolves.** " + " ".join(out)] if out else []


def _law(analysis: dict, i: int):
    from smollm.scaling import Law

    law = analysis["laws"][i]
    return Law(*(np.array([law[k]["value"]]) for k in ("E", "A", "alpha")), analysis["c0"])


def _log_axes(ax) -> None:
    """Log x and y; the y labels as plain numbers (its range is narrow), x majors only."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2f"))
    ax.grid(alpha=0.3, which="both")


def plot_scaling(variants, compute, values, analysis, path: Path, title: str) -> None:
    """Bits per byte against compute per variant (log axes): seed means with their sd, fitted laws."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    grid = np.geomspace(compute.min() / 1.3, compute.max() * 1.3, 100)
    for i, name in enumerate(variants):
        sd = values[i].std(-1, ddof=1) if values.shape[-1] > 1 else None
        ax.errorbar(compute[i], values[i].mean(-1), yerr=sd, fmt="o", color=f"C{i % 10}", capsize=3,
                    markersize=4, label=name)  # fmt: skip
        if analysis:
            ax.plot(grid, _law(analysis, i).loss(grid), color=f"C{i % 10}", linewidth=1)
    _log_axes(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final validation bits per byte (mean ± sd over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_multiplier(variants, compute, analysis, baseline: int, path: Path, title: str) -> None:
    """Each variant's compute multiplier vs the baseline: per rung (95% CI) and along the fits."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    base = _law(analysis, baseline)
    grid = np.geomspace(compute.min(), compute.max(), 100)
    for i, name in enumerate(variants):
        if i == baseline:
            continue
        per = analysis["vs"][i]["multiplier"]
        y = np.array([m["value"] for m in per])
        err = np.array([[m["value"] - m["lo"], m["hi"] - m["value"]] for m in per]).T
        ax.errorbar(compute[i], y, yerr=np.nan_to_num(err), fmt="o", color=f"C{i % 10}", capsize=3,
                    markersize=4, label=f"{name} (per rung, 95% CI)")  # fmt: skip
        fitted = base.compute_for(_law(analysis, i).loss(grid)) / grid
        ax.plot(grid, fitted, color=f"C{i % 10}", linewidth=1, label=f"{name} (fits)")
    ax.axhline(1.0, color="grey", linewidth=1)
    _log_axes(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"compute multiplier vs {variants[baseline]}")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def build_ladder_results(name: str, runs_root: Path, out_root: Path, publish: bool = True) -> Path:
    """Write results/<ladder>/ (summary.md, summary.csv, fits.csv, scaling.png, multiplier.png)
    and the index; with `publish`, also the ladder's W&B summary run."""
    from smollm.scaling import analyse

    root = LadderDir(runs_root, name)
    if not root.exists():
        raise SmolError(f"no ladder runs in {root.path}; run `smol run ladder` first")
    spec = root.read_spec()
    runs = load_ladder_runs(root)
    if not runs:
        raise SmolError(f"{root.path}: no rung has run yet")
    variants = list(next(iter(runs.values())))
    baseline = str(spec.get("baseline") or variants[0])
    fitted, seeds, compute, bpb, loss = fit_inputs(runs, variants)
    analysis = loss_analysis = None
    meta: dict[str, Any] = {
        "runs": runs,
        "baseline": baseline,
        "fitted": fitted,
        "match": spec.get("match", "none"),
    }
    if len(fitted) >= 3 and len(seeds) >= 2:
        vocab = next(x["summary"]["config"]["model"]["vocab_size"] for x in runs[fitted[0]][baseline].values() if _finished(x))  # fmt: skip
        target, meta["target"] = target_compute(root, variants, vocab)
        b = variants.index(baseline)
        analysis = analyse(compute, bpb, b, target, n_boot=N_BOOT)
        loss_analysis = analyse(compute, loss, b, target, n_boot=N_BOOT)
        meta.update(
            analysis=analysis, target_c=float(target[b]), reach=float(target[b] / compute[b].max())
        )
    rows = rung_rows(runs, baseline, analysis, fitted, variants)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "summary.csv")
    fits = fit_rows(analysis, loss_analysis, variants, baseline) if analysis else []
    if fits:
        write_csv(fits, out / "fits.csv")
        plot_scaling(
            variants,
            compute,
            bpb,
            analysis,
            out / "scaling.png",
            f"{name}: bits per byte against compute",
        )
        plot_multiplier(variants, compute, analysis, variants.index(baseline), out / "multiplier.png",
                        f"{name}: compute multiplier vs {baseline}")  # fmt: skip
    write_ladder_markdown(root, spec, rows, fits, meta, out / "summary.md")
    write_index(out_root)
    if publish and fits:
        _publish(root, runs, fits, out)
    return out


def write_ladder_markdown(root: LadderDir, spec: dict, rows, fits, meta: dict, path: Path) -> None:
    """summary.md: provenance, the per-rung table, the fits and what they answer, the figures."""
    base = meta["baseline"]
    what = {"params": "non-embedding parameters", "flops": "training FLOPs per token"}.get(
        meta["match"]
    )
    lines = [
        f"# Ladder `{root.name}`", "", str(spec.get("description") or "").strip(), "",
        f"**Provenance.** {provenance(root, list(dict.fromkeys(r['rung'] for r in rows)))}", "",
        "**Compute.** C = training tokens × FLOPs per token as `smol train` counts them: 6 × (non-embedding "
        "parameters + output layer) + 12 × layers × width × context (attention scores), i.e. 6·N·D with N the "
        "matmul parameters, attention added.", "",
        *([f"**Matched on {what}:** at every rung each variant's MLP width is set so that its {what} equal "
           f"`{base}`'s (within 1%); params are total (non-embedding).", ""] if what else []),
        "## Per rung", "",
        f"Final validation bits per byte: mean over seeds ± 95% CI (Student t) and the seed-to-seed sd; Δ bpb is the "
        f"paired difference from `{base}` at that rung (same seed, same data order) ± its 95% CI, p a paired two-sided "
        "t test, Holm-adjusted across the variants of the rung. Lower is better.", "",
        *_rung_table(rows, base), "",
    ]  # fmt: skip
    if fits:
        lines += [
            *_fit_section(fits, meta),
            *_against(fits, rows, meta),
            *_resolves(fits, rows, meta),
            "",
        ]
        lines += _wandb_lines(root, meta["runs"])
        lines += [
            "![bits per byte against compute](scaling.png) ![compute multiplier](multiplier.png)",
            "",
        ]
    else:
        lines += ["Fits need at least 3 rungs where every variant has 2 seeds finished; "
                  f"{_rungs_qualify(len(meta['fitted']))} so far.", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def _wandb_lines(root: LadderDir, runs) -> list[str]:
    """Where the runs are on W&B, when they were tracked there."""
    modes = [(x["summary"].get("config") or {}).get("tracking", {}).get("mode")
             for by in runs.values() for seeds in by.values() for x in seeds.values()]  # fmt: skip
    if all(m in (None, "disabled") for m in modes):
        return []
    return [f"**On W&B:** group `{root.name}`: one run per `<rung>-<variant>-s<seed>`, with `size` (the rung), "
            "`variant` and `seed` in its config, and the tables in the run "
            f"`{root.name}-summary`.", ""]  # fmt: skip


def _publish(root: LadderDir, runs, fits: list[dict], out: Path) -> None:
    """The ladder's tables and figures as its W&B summary run, tracked as its runs were."""
    from smollm.tracking import publish_ablation

    configs = [x["summary"].get("config") or {} for by in runs.values() for seeds in by.values() for x in seeds.values()]  # fmt: skip
    tracking = next((c["tracking"] for c in configs if "tracking" in c), None)
    if tracking is None:
        return
    headline = {f"{f['variant']}/{k}": f[k] for f in fits for k in ("fit_multiplier", "slope", "target_delta", "target_multiplier")
                if isinstance(f.get(k), float) and math.isfinite(f[k])}  # fmt: skip
    images = {"scaling": out / "scaling.png", "multiplier": out / "multiplier.png"}
    publish_ablation(root, tracking, read_csv_typed(out / "summary.csv"), images, headline)


def _rungs_qualify(n: int) -> str:
    return "1 rung qualifies" if n == 1 else f"{n} rungs qualify"
