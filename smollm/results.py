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
import json
import math
import statistics
from pathlib import Path
from typing import Any

from smollm.config import SmolError
from smollm.rundir import AblationDir, RunDir, RunDirError, code_versions, path_segment, read_json
from smollm.stats import holm, mean_ci, min_detectable, paired_test


def _run_record(run: RunDir) -> dict[str, Any]:
    """A run's summary and validation curve; a missing or unreadable run says so, never crashes."""
    try:
        summary = run.read_summary() or {"status": "missing"}
        rows = run.rows("metrics")
        curve = [(r["tokens"], r["val/loss"]) for r in rows if "val/loss" in r]
        train = [(r["tokens"], r["train/loss"]) for r in rows if "train/loss" in r]
    except (RunDirError, KeyError) as e:
        return {"summary": {"status": "unreadable", "error": str(e)}, "curve": [], "train": []}
    needed = ("val_loss", "val_bpb", "tokens")
    if summary["status"] == "finished" and not all(
        isinstance(summary.get(k), (int, float)) for k in needed
    ):
        summary = {
            "status": "unreadable",
            "error": f"{run.summary_path}: lacks {', '.join(needed)}",
        }
    return {"summary": summary, "curve": curve, "train": train}


def load_runs(root: AblationDir) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> {summary, curve}, from runs/<ablation>/<variant>-s<seed>/."""
    ablation = root.read_spec()
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for spec in ablation["variants"]:
        name = spec if isinstance(spec, str) else str(spec.get("name") or spec.get("preset"))
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
    """One row per variant: sizes, throughput, learning rate, final val loss/bpb with their
    seed-to-seed sd, the paired difference from the baseline (CI, p, Holm-adjusted p, resolved)
    and the downstream tasks' scores (mean ± CI over seeds)."""
    ok_of = {name: {s: r["summary"] for s, r in seeds.items() if r["summary"].get("status") == "finished"}
             for name, seeds in runs.items()}  # fmt: skip
    base = ok_of.get(baseline, {})
    tasks = sorted({t for ok in ok_of.values() for s in ok.values() for t in (s.get("eval") or {})})
    sources = list(dict.fromkeys(n for ok in ok_of.values() for s in ok.values()
                                 for n in (s.get("val_sources") or {})))  # fmt: skip
    rows = []
    for name, seeds in runs.items():
        ok = ok_of[name]
        first = next(iter(ok.values()), {})
        bpbs = [s["val_bpb"] for s in ok.values()]
        loss, bpb = mean_ci([s["val_loss"] for s in ok.values()]), mean_ci(bpbs)
        test = (
            paired_test([ok[s]["val_bpb"] - base[s]["val_bpb"] for s in ok if s in base])
            if name != baseline
            else (0.0, None, None, None)
        )
        rows.append({
            "variant": name, "seeds": f"{len(ok)}/{len(seeds)}", "parameters": first.get("parameters"),
            "non_embedding_parameters": first.get("non_embedding_parameters"), "flops_per_token": first.get("flops_per_token"),
            "tokens": first.get("tokens"), "tokens_per_s": round(statistics.fmean([s["tokens_per_s"] for s in ok.values() if s.get("tokens_per_s")]), 0) if ok else None,
            "lr": first.get("config", {}).get("train", {}).get("lr"), "lr_source": first.get("lr_source", ""),
            "val_loss": loss[0], "val_loss_ci95": loss[1], "val_bpb": bpb[0], "val_bpb_ci95": bpb[1],
            "val_bpb_sd": statistics.stdev(bpbs) if len(bpbs) > 1 else None,
            "delta_bpb_vs_baseline": test[0], "delta_bpb_sd": test[1], "delta_bpb_ci95": test[2], "delta_bpb_p": test[3],
            **_task_columns(ok, tasks), **_source_columns(ok, base, sources),
            "failed": "; ".join(f"s{s}: {r['summary'].get('status')}" for s, r in seeds.items() if r["summary"].get("status") != "finished"),
        })  # fmt: skip
    adjusted = holm({r["variant"]: r["delta_bpb_p"] for r in rows if r["variant"] != baseline})
    for r in rows:
        r["delta_bpb_p_holm"] = adjusted.get(r["variant"])
        r["resolved"] = r["delta_bpb_p_holm"] is not None and r["delta_bpb_p_holm"] < 0.05
    return rows


def _task_columns(ok: dict[int, dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """<task>_<metric> (mean over seeds) and its 95% CI, <task>_items."""
    from smollm.evals import headline

    out: dict[str, Any] = {}
    for task in tasks:
        metric = headline(task)
        scores = [s["eval"][task] for s in ok.values() if task in (s.get("eval") or {})]
        m, ci = mean_ci([sc[metric] for sc in scores])
        out[f"{task}_{metric}"], out[f"{task}_{metric}_ci95"] = m, ci
        out[f"{task}_items"] = scores[0]["items"] if scores else None
    return out


def _source_columns(
    ok: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], sources: list[str]
) -> dict[str, Any]:
    """A mixture's sources: <source>_bpb (mean over seeds) and its 95% CI, and the paired Δ from
    the baseline on that source's held-out text, with its 95% CI."""

    def scored(seeds: dict[int, dict[str, Any]], name: str) -> dict[int, float]:
        return {s: r["val_sources"][name]["bpb"] for s, r in seeds.items()
                if name in (r.get("val_sources") or {})}  # fmt: skip

    out: dict[str, Any] = {}
    for name in sources:
        bpb, ref = scored(ok, name), scored(base, name)
        m, ci = mean_ci(list(bpb.values()))
        delta = paired_test([bpb[s] - ref[s] for s in bpb if s in ref])
        out |= {f"{name}_bpb": m, f"{name}_bpb_ci95": ci,
                f"{name}_delta_bpb": delta[0], f"{name}_delta_bpb_ci95": delta[2]}  # fmt: skip
    return out


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


def read_csv_typed(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A CSV written by write_csv, as (columns, rows) with its cells typed back: empty -> None,
    True/False -> bool, numbers -> int or float (the printed decimals, exactly), else text."""

    def typed(cell: str) -> Any:
        if cell in ("", "True", "False"):
            return {"": None, "True": True, "False": False}[cell]
        for kind in (int, float):
            try:
                return kind(cell)
            except ValueError:
                pass
        return cell

    with path.open(newline="") as fh:
        columns, *rows = list(csv.reader(fh))
    return columns, [[typed(c) for c in row] for row in rows]


def _headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers a dashboard shows first, per variant: bpb, paired Δ, its CI, Holm p, resolved."""
    keys = {"val_bpb": "val_bpb", "delta_bpb": "delta_bpb_vs_baseline",
            "delta_bpb_ci95": "delta_bpb_ci95", "p_holm": "delta_bpb_p_holm", "resolved": "resolved"}  # fmt: skip
    return {
        f"{r['variant']}/{name}": r[key]
        for r in rows
        for name, key in keys.items()
        if r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key]))
    }


def _publish(
    root: AblationDir, runs: dict[str, dict[int, dict[str, Any]]], rows, out: Path
) -> None:
    """The tables and figures as the ablation's W&B summary run, tracked as its runs were."""
    from smollm.tracking import publish_ablation

    configs = [r["summary"].get("config") or {} for seeds in runs.values() for r in seeds.values()]
    tracking = next((c["tracking"] for c in configs if "tracking" in c), None)
    if tracking is None:  # no run has recorded its config: nothing was tracked
        return
    images = {"forest": out / "forest.png", "loss_curves": out / "loss_curves.png"}
    publish_ablation(root, tracking, read_csv_typed(out / "summary.csv"), images, _headline(rows))


def _pct(m: float | None, ci: float | None) -> str:
    if m is None or math.isnan(m):
        return "—"
    return f"{100 * m:.1f}" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def _p(p: float | None) -> str:
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def write_markdown(
    rows: list[dict[str, Any]], reference: dict | None, meta: dict[str, Any], path: Path
) -> None:
    """summary.md: provenance, the table, what it resolves, the power, the figures."""
    from smollm.evals import headline

    tasks = sorted({k[: -len("_items")] for r in rows for k in r if k.endswith("_items")})
    num = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "—"  # noqa: E731
    lines = [f"# Ablation `{meta['name']}`", "", meta.get("description", "").strip(), "",
             f"**Provenance.** {meta['provenance']}", ""]  # fmt: skip
    match = meta.get("match", "none")
    if match != "none":  # the sizes that were matched, shown beside the totals
        what = {"params": "non-embedding parameters", "flops": "training FLOPs per token"}[match]
        lines += [f"**Matched on {what}:** each variant's MLP width is set so that its {what} equal "
                  f"`{meta['baseline']}`'s (within 1%); params are total (non-embedding).", ""]  # fmt: skip

    def params(r: dict[str, Any]) -> str:
        both = match != "none" and r.get("non_embedding_parameters") is not None
        return num(r["parameters"]) + (f" ({num(r['non_embedding_parameters'])})" if both else "")

    lines += [
        f"Final validation loss and bits per byte: mean over seeds, ± 95% CI (Student t) and the seed-to-seed sd; Δ bpb is the paired difference from `{meta['baseline']}` ({meta.get('pairing') or 'same seed, same data order'}), ± its 95% CI; p is a paired two-sided t test, Holm-adjusted across the {len(rows) - 1} comparisons; ✓ marks Δs resolved at family-wise α = 0.05. Lower is better."
        + (f" Downstream tasks: zero-shot {', '.join(f'{t} {headline(t)}' for t in tasks)} in %, mean ± 95% CI over seeds." if tasks else ""),
        "",
        "| variant | seeds | params | FLOPs/token | tokens | tokens/s | lr | val loss | val bits/byte (sd) | Δ bpb vs baseline | p (Holm) | resolved |"
        + "".join(f" {t} ({rows[0].get(f'{t}_items') or '—'} items) |" for t in tasks),
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|:-:|" + "---:|" * len(tasks),
    ]  # fmt: skip
    for r in rows:
        is_base = r["variant"] == meta["baseline"]
        delta = "baseline" if is_base else _fmt(r["delta_bpb_vs_baseline"], r["delta_bpb_ci95"])
        sd = f" ({r['val_bpb_sd']:.4f})" if r["val_bpb_sd"] is not None else ""
        lr = (
            f"{r['lr']:.4g}" + (f" ({r['lr_source']})" if r["lr_source"] else "")
            if r["lr"]
            else "—"
        )
        fail = f" ({r['failed']})" if r["failed"] else ""
        mark = "" if is_base else ("✓" if r["resolved"] else "")
        cells = "".join(
            f" {_pct(r.get(f'{t}_{headline(t)}'), r.get(f'{t}_{headline(t)}_ci95'))} |"
            for t in tasks
        )
        lines.append(f"| {r['variant']}{fail} | {r['seeds']} | {params(r)} | {num(r['flops_per_token'])} | {num(r['tokens'])} | "
                     f"{num(r['tokens_per_s'])} | {lr} | {_fmt(r['val_loss'], r['val_loss_ci95'])} | {_fmt(r['val_bpb'], r['val_bpb_ci95'])}{sd} | "
                     f"{delta} | {'—' if is_base else _p(r['delta_bpb_p_holm'])} | {mark} |{cells}")  # fmt: skip
    if reference:
        ref_cells = "".join(
            f" {_pct((reference.get('eval') or {}).get(t, {}).get(headline(t)), None)} |"
            for t in tasks
        )
        lines.append(f"| *reference: {reference['variant']}* | — | {reference['parameters']:,} | — | (pretrained) | — | — | "
                     f"{reference['val_loss']:.4f} (SmolLM2 tokenizer) | {reference['val_bpb']:.4f} | — | — | |{ref_cells}")  # fmt: skip
    lines += _source_table(rows, meta["baseline"])
    lines += ["", *_verdict(rows, meta["baseline"]), "", *meta.get("notes", []),
              "![validation loss](loss_curves.png) ![paired differences](forest.png)", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def _source_table(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """Per source of a mixture: each variant's bpb on that source's held-out text, and its paired
    Δ from the baseline there (✓: the 95% CI excludes 0, per comparison, not Holm-adjusted)."""
    sources = [k[: -len("_delta_bpb")] for k in rows[0] if k.endswith("_delta_bpb")]
    if not sources:
        return []
    lines = ["", f"**Per source** (each source's own held-out split): bits per byte, mean ± 95% CI over seeds; "
             f"Δ is the paired difference from `{baseline}` on that text, ✓ where its 95% CI excludes 0 "
             "(per comparison, not adjusted across sources). The main table's val bits/byte is these "
             "sources' mean weighted by `data.val_weights` (default: the mixture's weights).", "",
             "| variant |" + "".join(f" {n} bpb | Δ {n} |" for n in sources),
             "|---|" + "---:|---:|" * len(sources)]  # fmt: skip
    for r in rows:
        cells = ""
        for n in sources:
            delta, ci = r[f"{n}_delta_bpb"], r[f"{n}_delta_bpb_ci95"]
            mark = " ✓" if ci is not None and abs(delta) > ci else ""
            shown = "baseline" if r["variant"] == baseline else _fmt(delta, ci) + mark
            cells += f" {_fmt(r[f'{n}_bpb'], r[f'{n}_bpb_ci95'])} | {shown} |"
        lines.append(f"| {r['variant']} |{cells}")
    return lines


def _said(r: dict[str, Any]) -> str:
    return f"`{r['variant']}` ({r['delta_bpb_vs_baseline']:+.3f} bpb)"


def _verdict(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """What the table resolves, in words, and the smallest effect it could have resolved."""
    others = [r for r in rows if r["variant"] != baseline and r["delta_bpb_sd"] is not None]
    if not others:
        return []
    worse = [_said(r) for r in others if r["resolved"] and r["delta_bpb_vs_baseline"] > 0]
    better = [_said(r) for r in others if r["resolved"] and r["delta_bpb_vs_baseline"] < 0]
    open_ = [f"`{r['variant']}`" for r in others if not r["resolved"]]
    n = min(int(r["seeds"].split("/")[0]) for r in others)
    sd = statistics.median(r["delta_bpb_sd"] for r in others)
    halves = [r["delta_bpb_ci95"] for r in others]
    out = ["**What this resolves.** "
           + (f"Worse than `{baseline}` at this scale: {', '.join(worse)}. " if worse else "")
           + (f"Better than `{baseline}`: {', '.join(better)}. " if better else "")
           + (f"Not resolved (no claim either way): {', '.join(open_)}." if open_ else "Every difference is resolved.")]  # fmt: skip
    out += ["", f"**Power.** Δ CI half-widths: median {statistics.median(halves):.4f}, largest {max(halves):.4f} bpb. "
            f"With {n} seeds and the median seed-to-seed sd of the paired Δ ({sd:.4f} bpb), a paired two-sided t "
            f"test at α = 0.05 detects a true |Δ| of {min_detectable(sd, n):.4f} bpb with 80% power "
            f"(per comparison; the Holm correction across {len(others)} asks a little more)."]  # fmt: skip
    return out


def plot_forest(rows: list[dict[str, Any]], baseline: str, path: Path, title: str) -> None:
    """Each variant's paired Δ bpb vs the baseline with its 95% CI; resolved ones filled."""
    plt = pyplot()
    others = [
        r for r in rows if r["variant"] != baseline and not math.isnan(r["delta_bpb_vs_baseline"])
    ]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(others) + 1.5), dpi=110)
    for i, r in enumerate(reversed(others)):
        ci = r["delta_bpb_ci95"] or 0.0
        ax.errorbar(r["delta_bpb_vs_baseline"], i, xerr=ci, fmt="o", color="C3" if r["resolved"] else "C0",
                    mfc="C3" if r["resolved"] else "white", capsize=3)  # fmt: skip
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(range(len(others)), [r["variant"] for r in reversed(others)])
    ax.set_xlabel(
        f"Δ bits per byte vs {baseline} (paired by seed), 95% CI; filled: resolved (Holm)"
    )
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


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


def _band(
    curves: list[list[tuple[int, float]]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """x, mean, min, max over the seeds' curves (cut to the shortest)."""
    n = min(len(c) for c in curves)
    cols = list(zip(*[[v for _, v in c[:n]] for c in curves], strict=True))
    return (
        [t for t, _ in curves[0][:n]],
        [statistics.fmean(c) for c in cols],
        [min(c) for c in cols],
        [max(c) for c in cols],
    )


def plot_curves(runs: dict[str, dict[int, dict[str, Any]]], path: Path, title: str) -> None:
    """Training loss (mean line, min-max band over seeds) and validation loss (markers) against tokens."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, seeds) in enumerate(runs.items()):
        color = f"C{i % 10}"
        train = [r["train"] for r in seeds.values() if r.get("train")]
        if train:
            x, mean, lo, hi = _band(train)
            ax.plot(x, mean, label=name, linewidth=1.2, color=color)
            ax.fill_between(x, lo, hi, alpha=0.15, color=color)
        val = [r["curve"] for r in seeds.values() if r["curve"]]
        if val:
            x, mean, lo, hi = _band(val)
            ax.errorbar(x, mean, yerr=[[m - a for m, a in zip(mean, lo, strict=True)], [b - m for m, b in zip(mean, hi, strict=True)]],
                        fmt="o", color=color, markersize=4, capsize=2, label=None if train else name)  # fmt: skip
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("loss (nats/token): training line, validation markers")
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
        f"code at git {code_versions(root.path.iterdir())}{wall_time(prov.get('sessions') or [])}; "
        f"tables rebuilt from the run directories in `runs/{root.name}/` by `smol results {root.name}`."
    )


def wall_time(sessions: list[dict[str, Any]]) -> str:
    """', 9.6 minutes of wall time in one session (15 runs trained)' (nothing when unrecorded):
    everything a `smol run ablation` did, its tuning and reference row included."""
    if not sessions:
        return ""
    minutes = sum(s["wall_s"] for s in sessions) / 60
    runs = sum(s["runs_trained"] for s in sessions)
    many = f"{len(sessions)} sessions" if len(sessions) > 1 else "one session"
    cut = sum(bool(s.get("interrupted")) for s in sessions)
    cut_short = f", {cut} of them interrupted" if cut else ""
    return f", {minutes:.1f} minutes of wall time in {many} ({runs} runs trained{cut_short})"


def _lr_sources(root: AblationDir, spec: dict[str, Any], variants) -> dict[str, str]:
    """Where each variant's learning rate came from: its own search, a sweep, or the base."""
    if root.tuned.is_file():
        return {v: f"tuned, {t['trials']} trials" for v, t in read_json(root.tuned).items()}
    swept = spec.get("from_sweep")
    if swept:
        name = swept if isinstance(swept, str) else swept.get("name")
        return dict.fromkeys(variants, f"sweep {name}")
    return {}


VALIDATION_FIELDS = (
    "corpus",
    "text_field",
    "val_fraction",
    "max_docs",
)  # what decides the held-out text


def _validation_note(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> list[str]:
    """A warning when a variant (a data variant) was scored on other held-out text than the
    baseline: its Δ then mixes which text is easier with which training is better."""

    def held_out(seeds: dict[int, dict[str, Any]]) -> dict | None:
        configs = [r["summary"].get("config") for r in seeds.values() if r["summary"].get("config")]
        if not configs:
            return None
        data = configs[0]["data"]
        if data.get("mixture"):  # a mixture's held-out text: its sources, weighted as scored
            weights = data.get("val_weights") or data["mixture"]
            total = sum(weights.values())
            return {"sources": sorted(data["mixture"]), **{k: data.get(k) for k in VALIDATION_FIELDS[1:]},
                    "weights": {n: round(w / total, 9) for n, w in sorted(weights.items()) if w}}  # fmt: skip
        return {k: data.get(k) for k in VALIDATION_FIELDS}

    base = held_out(runs.get(baseline, {}))
    other = [name for name, seeds in runs.items()
             if base is not None and (mine := held_out(seeds)) is not None and mine != base]  # fmt: skip
    if not other:
        return []
    were = "was" if len(other) == 1 else "were"
    return [f"**Other validation text:** {', '.join(f'`{v}`' for v in other)} {were} trained on other data "
            f"and scored on {'its' if len(other) == 1 else 'their'} own corpus' held-out split, not "
            f"`{baseline}`'s: the Δ compares different text as well as different training.", ""]  # fmt: skip


def _pairing(runs: dict[str, dict[int, dict[str, Any]]]) -> str | None:
    """What a seed holds fixed across variants, when they differ in data (None: the usual)."""
    datas = {json.dumps(r["summary"]["config"]["data"], sort_keys=True)
             for seeds in runs.values() for r in seeds.values() if r["summary"].get("config")}  # fmt: skip
    if len(datas) < 2:
        return None
    return "same seed: the same initial weights and draw stream, each variant drawing from its own data"


def _wandb_note(runs: dict[str, dict[int, dict[str, Any]]], ablation: str) -> list[str]:
    """Where the same runs are on W&B (when they were tracked there)."""
    configs = [r["summary"].get("config", {}) for seeds in runs.values() for r in seeds.values()]
    tracked = [
        c["tracking"]
        for c in configs
        if c.get("tracking", {}).get("mode") not in (None, "disabled")
    ]
    if not tracked:
        return []
    return [f"**On W&B:** project `{tracked[0]['project']}`, group `{ablation}`: one run per `<variant>-s<seed>`, "
            "with `variant` and `seed` in its config (group by `variant` for the seed bands).", ""]  # fmt: skip


def build_results(ablation: str, runs_root: Path, out_root: Path, publish: bool = True) -> Path:
    """Write results/<ablation>/{summary.md, summary.csv, loss_curves.png, forest.png} and the
    index; with `publish`, also the ablation's W&B summary run (when its runs were tracked)."""
    root = AblationDir(runs_root, ablation)
    if not root.exists():
        raise SmolError(f"no ablation runs in {root.path}; run `smol run ablation` first")
    spec = root.read_spec()
    runs = load_runs(root)
    baseline = str(spec.get("baseline") or next(iter(runs)))
    rows = summary_rows(runs, baseline)
    sources = _lr_sources(root, spec, runs)
    for r in rows:
        r["lr_source"] = sources.get(r["variant"], "")
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
        "match": spec.get("match", "none"),
        "provenance": provenance(root),
        "notes": _validation_note(runs, baseline) + _wandb_note(runs, ablation),
        "pairing": _pairing(runs),
    }
    plot_forest(
        rows, baseline, out / "forest.png", f"{ablation}: paired differences from {baseline}"
    )
    write_markdown(rows, reference, meta, out / "summary.md")
    plot_curves(
        runs,
        out / "loss_curves.png",
        f"{ablation}: loss (mean, min-max band over seeds)",
    )
    write_index(out_root)
    if publish:
        _publish(root, runs, rows, out)
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
    out = out_root / "sweeps" / path_segment(name, "sweep")
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
    said = ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
    lines.append(f"Trials: {said}." if said else f"Trials: none yet (`smol sweep run {name}`).")
    if complete:
        best = study.best_trial
        lines += ["", f"**Best** (trial {best.number}, objective {best.value:.4f}): "
                  + ", ".join(f"`{k}={v}`" for k, v in best.params.items())]  # fmt: skip
    if len(complete) >= 2 and len(keys) >= 2:
        importances = optuna.importance.get_param_importances(study)
        lines += ["", "| parameter | importance (fANOVA) |", "|---|---:|",
                  *[f"| {k} | {v:.3f} |" for k, v in importances.items()]]  # fmt: skip
    if rows:
        lines += ["", "| " + " | ".join(["trial", "state", "objective", *keys]) + " |",
                  "|---|---|---:|" + "---:|" * len(keys)]  # fmt: skip
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "—"
        cells = [str(r["trial"]), r["state"].lower(), value, *(str(r[k]) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
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
