"""What users see on W&B, read back from the offline files with W&B's own protobuf records."""

import csv
import json
import os
import struct
import time
from pathlib import Path

import pytest

from .conftest import smol

ROOT = Path(__file__).resolve().parent.parent


def wandb_records(path: Path) -> list:
    """Every record of a `.wandb` file as `wandb_internal_pb2.Record`s: the file is a LevelDB-style
    log (a 7-byte `:W&B` header, then 32 KiB blocks of chunks with a 7-byte crc/length/type header)
    whose payloads are W&B's protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def read_run(run_dir: Path, timeout: float = 60.0) -> dict:
    """The offline W&B run under run_dir/wandb: its run record, history rows and final summary.
    wandb's service writes the file after finish() returns, so the file and its exit record can
    land later (on a loaded machine, after the command has exited)."""
    deadline = time.monotonic() + timeout
    while not (found := list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))):
        assert time.monotonic() < deadline, f"no offline W&B run under {run_dir}"
        time.sleep(0.2)
    (path,) = found
    while True:
        records = wandb_records(path)
        if (
            any(r.WhichOneof("record_type") == "exit" for r in records)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)

    def items(update) -> dict:  # a nested key (a logged table or image's fields) becomes a dict
        out: dict = {}
        for i in update:
            *parents, last = list(i.nested_key) or [i.key]
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = json.loads(i.value_json)
        return out

    out = {"run": None, "history": [], "summary": {}, "files": path.parent / "files"}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
        elif kind == "history":
            out["history"].append(items(r.history.item))
        elif kind == "summary":
            out["summary"].update(items(r.summary.update))
    return out


def test_ablation_runs_and_its_summary_run_are_on_wandb(tmp_path):
    """Each run: group, job_type, variant and seed in its config, curves against tokens; the
    summary run: the table equal to summary.csv, the figures, the headline numbers; publishing
    again replaces the summary run."""
    proc = smol("run", "ablation", "smoke", "tracking.mode=offline", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs" / "smoke"
    for variant, seed in (("full", 0), ("v1", 1)):
        run = read_run(runs / f"{variant}-s{seed}")
        assert (run["run"].run_group, run["run"].job_type) == ("smoke", "ablation")
        config = {i.key: json.loads(i.value_json) for i in run["run"].config.update}
        assert (config["variant"], config["seed"]) == (variant, seed)
        assert config["preset"] == variant and "model" in config and "train" in config
        train = [h for h in run["history"] if "train/loss" in h]
        val = [h for h in run["history"] if "val/bpb" in h]
        assert len(train) == 6 and len(val) == 2 and all("tokens" in h for h in train + val)
        assert [h["tokens"] for h in train] == sorted(h["tokens"] for h in train)

    summary = read_run(runs / "summary")
    assert (summary["run"].run_group, summary["run"].job_type) == ("smoke", "summary")
    table_ref = summary["summary"]["summary"]
    assert table_ref["_type"] == "table-file"
    table = json.loads((summary["files"] / table_ref["path"]).read_text())
    with (tmp_path / "results" / "smoke" / "summary.csv").open() as fh:
        header, *rows = list(csv.reader(fh))
    assert table["columns"] == header and len(table["data"]) == len(rows) == 2

    def same(cell, value):  # the CSV's text and the table's typed value
        if cell == "":
            return value is None
        if isinstance(value, (bool, str)):
            return cell == str(value)
        return float(cell) == value

    for row, logged in zip(rows, table["data"], strict=True):
        assert all(same(c, v) for c, v in zip(row, logged, strict=True)), (row, logged)
    for image in ("forest", "loss_curves"):
        assert summary["summary"][image]["_type"] == "image-file"
        assert (summary["files"] / summary["summary"][image]["path"]).is_file()
    v1 = dict(zip(header, rows[1], strict=True))
    assert abs(summary["summary"]["v1/delta_bpb"] - float(v1["delta_bpb_vs_baseline"])) < 5e-7
    assert summary["summary"]["v1/resolved"] == (v1["resolved"] == "True")

    first_id = summary["run"].run_id
    again = smol("results", "smoke", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list((runs / "summary").glob("wandb/offline-run-*"))) == 1  # replaced, not added
    assert read_run(runs / "summary")["run"].run_id == first_id
    assert smol("results", "smoke", "--no-wandb", cwd=tmp_path).returncode == 0


def test_a_ladders_runs_are_one_group_with_size_variant_and_seed(tmp_path):
    """Every run of a ladder in the ladder's W&B group with size (the rung), variant and seed in
    its config; the ladder's summary run carries summary.csv, the figures and the headline fits."""
    from .test_ladder import tiny_ladder

    path = tiny_ladder(tmp_path)
    proc = smol("run", "ladder", str(path), "tracking.mode=offline", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs" / "tiny"
    for rung, variant, seed in (("a", "full", 0), ("c", "v1", 1)):
        run = read_run(runs / rung / f"{variant}-s{seed}")
        assert (run["run"].run_group, run["run"].job_type) == ("tiny", "ladder")
        assert run["run"].display_name == f"{rung}-{variant}-s{seed}"
        config = {i.key: json.loads(i.value_json) for i in run["run"].config.update}
        assert (config["size"], config["variant"], config["seed"]) == (rung, variant, seed)
    summary = read_run(runs / "summary")
    assert (summary["run"].run_group, summary["run"].job_type) == ("tiny", "summary")
    table = json.loads((summary["files"] / summary["summary"]["summary"]["path"]).read_text())
    with (tmp_path / "results" / "tiny" / "summary.csv").open() as fh:
        header, *rows = list(csv.reader(fh))
    assert table["columns"] == header and len(table["data"]) == len(rows) == 6
    assert {"scaling", "multiplier"} <= set(summary["summary"])
    assert "v1/slope" in summary["summary"] and "full/slope" not in summary["summary"]


def test_online_without_a_key_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    """tracking.mode=online with no W&B key was wandb's UsageError traceback, once the run
    directory existed (and in every run of an ablation)."""
    from smollm.config import SmolError
    from smollm.tracking import wandb_mode

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(SmolError, match="tracking.mode=online: no W&B API key"):
        wandb_mode("online")
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert wandb_mode("online") == "online" and wandb_mode("auto") == "online"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode("online") == "online"
    proc = smol("train", "--run-dir", "R", "tracking.mode=online", "train.max_steps=1",
                cwd=tmp_path, env={**env, "HOME": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: tracking.mode=online: no W&B API key")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "R").exists()
