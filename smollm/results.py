"""`smol results`: rebuild results/<ablation>/ from run directories alone (byte-identical on rebuild).

summary.csv / summary.md: per variant, mean ± 95% CI over seeds of the final validation loss and
bits per byte, and the paired difference from the baseline (paired by seed). loss_curves.png:
validation loss against tokens, mean line and min-max band over seeds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from smollm.tracking import code_versions, read_jsonl

# Two-sided 95% Student-t quantiles by degrees of freedom (1.96 beyond 30).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% t interval (None with one value)."""
    if not values:
        return math.nan, None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


def load_runs(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> seed -> {summary, curve}, from runs/<ablation>/<variant>-s<seed>/."""
    ablation = json.loads((root / "ablation.json").read_text())
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for spec in ablation["variants"]:
        name = spec if isinstance(spec, str) else spec.get("name", spec["preset"])
        runs[name] = {}
        for seed in ablation.get("seeds") or [0]:
            d = root / f"{name}-s{seed}"
            summary = (
                json.loads((d / "summary.json").read_text())
                if (d / "summary.json").is_file()
                else {"status": "missing"}
            )
            curve = [
                (r["tokens"], r["val/loss"])
                for r in read_jsonl(d / "metrics.jsonl")
                if "val/loss" in r
            ]
            runs[name][int(seed)] = {"summary": summary, "curve": curve}
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


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v))
                for k, v in row.items()
            }
        )
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


def plot_curves(runs: dict[str, dict[int, dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def provenance(root: Path) -> str:
    prov = (
        json.loads((root / "provenance.json").read_text())
        if (root / "provenance.json").is_file()
        else {}
    )
    m = prov.get("machine", {})
    return (
        f"Produced by `{prov.get('command', 'smol run ablation')}` starting {prov.get('started', '?')} on {m.get('device', '?')} "
        f"({m.get('threads', '?')} threads, torch {m.get('torch', '?')}), code at git {code_versions(root.iterdir())}; "
        f"tables rebuilt from the run directories in `runs/{root.name}/` by `smol results {root.name}`."
    )


def build_results(ablation: str, runs_root: Path, out_root: Path) -> Path:
    """Write results/<ablation>/{summary.md, summary.csv, loss_curves.png} and the index."""
    from smollm.config import SmolError

    root = runs_root / ablation
    if not (root / "ablation.json").is_file():
        raise SmolError(f"no ablation runs in {root}; run `smol run ablation` first")
    spec = json.loads((root / "ablation.json").read_text())
    runs = load_runs(root)
    baseline = str(spec.get("baseline") or next(iter(runs)))
    rows = summary_rows(runs, baseline)
    out = out_root / ablation
    out.mkdir(parents=True, exist_ok=True)
    ref_path = root / "reference" / "summary.json"
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else None
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
