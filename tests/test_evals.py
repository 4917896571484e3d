"""Downstream evals: lm-evaluation-harness's formats and scoring, batched, and in training."""

import json
import shutil

import pytest
import torch

from smollm import ModelConfig, SmolLM, evals
from smollm.evals import (
    Item,
    encode_pair,
    encode_pairs,
    load_items,
    pack,
    pack_alone,
    score_one,
    score_packed,
)

from .conftest import make_docs, smol, write_jsonl


def tiny_model(max_seq_len: int = 512, **kw) -> SmolLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=49152, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      intermediate_size=64, max_seq_len=max_seq_len, **kw)  # fmt: skip
    return SmolLM(cfg).eval()


def test_prompt_formats_are_lm_evaluation_harness_s():
    """The first item of each task, as lm-eval 0.4 builds its requests."""
    first = {t: load_items(t, 1)[0] for t in evals.TASKS}
    assert first["arc_easy"].requests()[0] == (
        "Question: Which technology was developed most recently?\nAnswer:",
        " cellular telephone",
    )
    assert first["hellaswag"].requests()[3] == (
        "Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")  # fmt: skip
    assert first["hellaswag"].gold == 3
    assert (
        first["piqa"].requests()[0][0]
        == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    )
    wino = first["winogrande"].requests()
    assert wino == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                    ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]  # fmt: skip
    assert first["winogrande"].gold == 1
    assert first["sciq"].gold == 3 and first["sciq"].requests()[3][1] == " darwin"
    csqa = first["csqa"].requests()
    assert csqa[0][0].startswith("Question: A revolving door") and csqa[0][0].endswith(
        "\nE. new york\nAnswer:"
    )
    assert [c for _, c in csqa] == [" A", " B", " C", " D", " E"] and first["csqa"].gold == 0
    assert first["openbookqa"].requests()[0][1] == " Deep sea animals"


def test_one_tokenizer_call_splits_as_lm_evaluation_harness_does_request_by_request(tokenizer):
    """lm-eval encodes context and context + continuation of each request on its own; encode_pairs
    encodes every distinct string of a whole task in one call and must give the same tokens."""

    def theirs(context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        whole = tokenizer.encode(context + continuation, add_special_tokens=False)
        if not context:
            return [tokenizer.eos_token_id], whole
        ctx = tokenizer.encode(context, add_special_tokens=False)
        return ctx, whole[len(ctx) :]

    pairs = [pair for t in evals.TASKS for item in load_items(t, 20) for pair in item.requests()]
    pairs += [("Answer: ", "yes"), ("", " no"), ("Answer:", " yes"), ("Answer:  ", "")]
    got = encode_pairs(tokenizer, pairs)
    assert got == [theirs(c, x) for c, x in pairs]
    assert got[-4] == got[-2]
    assert [encode_pair(tokenizer, c, x) for c, x in pairs[:30]] == got[:30]


def test_each_answer_scores_the_sum_of_its_token_log_probabilities(tokenizer):
    model = tiny_model()
    item = Item(("The capital of France is",), (" Paris", " a big city", " London"), 0, (5, 10, 6))
    requests = [encode_pair(tokenizer, c, x) for c, x in item.requests()]
    got = score_packed(model, [pack(requests)])[0]
    for answer, (ctx, cont) in enumerate(requests):
        full = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).double(), -1)[0]  # by hand: every position
        want = sum(logp[len(ctx) - 1 + k, cont[k]].item() for k in range(len(cont)))
        assert got[answer] == pytest.approx(want, abs=2e-4)
        assert score_one(model, ctx, cont) == pytest.approx(want, abs=2e-4)


def test_batched_shared_context_scoring_equals_one_at_a_time(tokenizer):
    """Several items of every task, packed and batched with padding, vs one request at a time;
    also a model too short for the packed items (answers alone, cut on the left)."""
    items = [it for t in evals.TASKS for it in load_items(t, 2)]
    for model in (tiny_model(), tiny_model(max_seq_len=48, pos_embedding="learned")):
        packs = [p for _, p in evals._packs(items, tokenizer, model.config.max_seq_len)]
        got = score_packed(model, packs)
        flat = {}
        for (i, _), sums in zip(
            evals._packs(items, tokenizer, model.config.max_seq_len), got, strict=True
        ):
            for a, v in sums.items():
                flat[(i, a)] = v
        for i, item in enumerate(items):
            for a, (ctx, cont) in enumerate(
                encode_pair(tokenizer, c, x) for c, x in item.requests()
            ):
                if len(ctx) + len(cont) - 1 > model.config.max_seq_len:  # lm-eval: cut on the left
                    p = pack_alone(a, ctx, cont, model.config.max_seq_len)
                    ctx, cont = p.tokens[: len(p.tokens) - len(cont) + 1], cont
                assert flat[(i, a)] == pytest.approx(score_one(model, ctx, cont), abs=5e-4), (i, a)


def test_answers_sharing_words_share_their_tokens_and_score_as_alone(tokenizer):
    """The tree: a token per distinct prefix of the requests, and each answer's score unchanged
    (answers sharing words, one a prefix of another, two the same)."""
    model = tiny_model()
    answers = [" sat on the mat", " sat on the hat", " sat", " sat on the mat", " ran away"]
    requests = [encode_pair(tokenizer, "The cat", a) for a in answers]
    packed = pack(requests)
    prefixes = {tuple((c + x)[:k]) for c, x in requests for k in range(1, len(c + x))}
    assert len(packed.tokens) == len(prefixes) < sum(len(c + x) - 1 for c, x in requests)
    got = score_packed(model, [packed, pack(requests[-2:])])
    for a, (ctx, cont) in enumerate(requests):
        assert got[0][a] == pytest.approx(score_one(model, ctx, cont), abs=2e-4), a
    assert got[0][0] == got[0][3] and got[1][1] == pytest.approx(got[0][4], abs=1e-5)


def test_static_shapes_score_as_the_exact_ones(tokenizer):
    """The GPU path's padded shapes (rows and width rounded up to powers of two, padding rows that
    attend only to themselves), run eagerly here: the same scores as each batch's exact shape, and
    a few shapes serve every batch of every task."""
    model = tiny_model()
    static = evals.StaticForwards(model, graph=False)
    items = [it for t in evals.TASKS for it in load_items(t, 12)]
    packs = [p for _, p in evals._packs(items, tokenizer, model.config.max_seq_len)]
    batches = evals._batches([len(p.tokens) for p in packs], 5)
    for batch in batches:
        chunk = [packs[k] for k in batch]
        got, want = score_packed(model, chunk, static), score_packed(model, chunk)
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            assert all(g[a] == pytest.approx(w[a], abs=1e-4) for a in w)
    for rows, width in static.shapes:
        assert rows & (rows - 1) == 0 and width & (width - 1) == 0 and width >= 32
    assert len(static.shapes) < len(batches)
    assert static.shape(3, 33) == (4, 64) and static.shape(16, 500) == (16, 512)


@pytest.mark.gpu
def test_cuda_graphs_score_as_eager_and_follow_the_weights(tokenizer):
    """On CUDA run_task replays captured graphs: each answer's eager score, graphs reused on a
    second run, new ones once the weights moved (a cast)."""
    model = tiny_model().cuda()
    items = [it for t in evals.TASKS for it in load_items(t, 10)]
    packs = [p for _, p in evals._packs(items, tokenizer, model.config.max_seq_len)]
    static = evals.static_forwards(model)
    for batch in evals._batches([len(p.tokens) for p in packs], 6):
        chunk = [packs[k] for k in batch]
        for g, w in zip(
            score_packed(model, chunk, static), score_packed(model, chunk), strict=True
        ):
            assert g.keys() == w.keys() and all(g[a] == pytest.approx(w[a], abs=1e-3) for a in w)
    arc = load_items("arc_easy", 40)
    eager = evals.run_task(model, tokenizer, "arc_easy", arc, graphs=False)
    graphed = evals.run_task(model, tokenizer, "arc_easy", arc)
    shapes = list(static.shapes)
    assert shapes and (graphed.acc, graphed.acc_norm) == (eager.acc, eager.acc_norm)
    evals.run_task(model, tokenizer, "arc_easy", arc)
    assert list(static.shapes) == shapes and evals.static_forwards(model) is static
    model.to(torch.bfloat16)
    assert evals.static_forwards(model) is not static
    halves = evals.run_task(model, tokenizer, "arc_easy", arc)
    assert abs(halves.acc - eager.acc) <= 0.1


def test_long_items_go_fewer_to_a_forward():
    """Longest first, at most `batch_size` per forward, and a forward's padded size within
    `batch_size` median-length items unless one item alone is longer."""
    lengths = [50] * 40 + [400, 300, 900]
    batches = evals._batches(lengths, 16)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    assert batches[:3] == [[42], [40, 41], list(range(16))]
    assert all(len(b) <= 16 and (len(b) == 1 or len(b) * lengths[b[0]] <= 16 * 50) for b in batches)
    assert evals._batches([], 16) == []


def test_the_packaged_smollm2_scores_above_chance(real_model, tokenizer):
    for task, n in (("hellaswag", 60), ("arc_easy", 150), ("piqa", 80)):  # margins >= 0.026
        r = evals.run_task(real_model, tokenizer, task, load_items(task, n), batch_size=16)
        assert r.items == n
        assert r.acc_norm - r.acc_norm_ci95 > evals.TASKS[task].chance, r  # clearly above chance


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "hellaswag,mmlu"], "unknown eval task 'mmlu'"),
        (["--limit", "0"], "--limit 0: must be >= 1"),
        (["--data-dir", "/nonexistent"], "eval data directory '/nonexistent' does not exist"),
        (["--model", "/nonexistent/model"], "no such file or directory"),
    ],
)
def test_bad_eval_input_is_one_line(tmp_path, args, message):
    proc = smol("eval", "--tasks", "arc_easy", "--limit", "2", *args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = smol("eval", "--tasks", "piqa", "--data-dir", str(empty), cwd=tmp_path)
    assert missing.returncode == 2 and "piqa: no arrow files in" in missing.stderr


def test_smol_eval_writes_a_table_and_json(tmp_path):
    proc = smol(
        "eval", "--tasks", "arc_easy,winogrande", "--limit", "8", "--out", "e.json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| arc_easy |" in proc.stdout and "| winogrande |" in proc.stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert (
        report["tasks"]["arc_easy"]["items"] == 8
        and report["tasks"]["winogrande"]["acc_norm"] is None
    )
    assert report["parameters"] == 134_515_008


TINY = [
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.intermediate_size=64",
    "model.max_seq_len=64", "data.seq_len=16", "data.tokenizer=bpe-512", "data.val_fraction=0.1",
    "train.batch_size=4", "train.max_steps=8", "train.eval_every=4", "train.ckpt_every=4", "train.log_every=1",
    "train.eval_blocks=2", "train.sample_tokens=2", "tracking.mode=disabled",
    "train.eval_tasks=[arc_easy,winogrande]", "train.eval_limit=6",
]  # fmt: skip


def test_training_scores_the_tasks_at_each_evaluation_and_resumes_bitwise(tmp_path):
    from smollm.checkpoint import load_latest
    from smollm.rundir import RunDir

    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(120))
    args = [*TINY, f"data.corpus={corpus}"]
    whole = smol("train", *args, "--run-dir", "A", "--quiet", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    rows = [r for r in RunDir(tmp_path / "A").rows("metrics") if "val/loss" in r]
    assert [r["step"] for r in rows] == [4, 8]
    assert all("eval/arc_easy/acc_norm" in r and "eval/winogrande/acc" in r for r in rows)
    summary = RunDir(tmp_path / "A").read_summary()
    assert summary["eval"]["arc_easy"]["items"] == 6 and set(summary["eval"]) == {
        "arc_easy",
        "winogrande",
    }
    # a run killed right after its step-4 checkpoint, then resumed
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    (tmp_path / "B" / "checkpoints" / "step-00000008.pt").unlink()
    RunDir(tmp_path / "B").write_summary("running", step=4)
    resumed = smol("train", *args, "--run-dir", "B", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "B" / "metrics.jsonl").read_text() == (
        tmp_path / "A" / "metrics.jsonl"
    ).read_text()
    a, b = (
        load_latest(RunDir(tmp_path / "A"))[0]["model"],
        load_latest(RunDir(tmp_path / "B"))[0]["model"],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_tasks_are_checked_before_training(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(60))
    proc = smol(
        "train",
        *TINY,
        f"data.corpus={corpus}",
        "train.eval_tasks=[hellaswagg]",
        "--run-dir",
        "R",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "unknown eval task 'hellaswagg'" in proc.stderr
    assert not list((tmp_path / "R").glob("checkpoints/*.pt"))
