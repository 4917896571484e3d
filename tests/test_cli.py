import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smollm.cli import app
from smollm.config import ConfigError

from .conftest import smol

runner = CliRunner()


def test_inspect_prints_exact_counts():
    result = runner.invoke(app, ["inspect", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    assert "134,515,008" in result.output and "106,203,456" in result.output
    assert "0..29 (DecoderLayer): 3,540,096  each, ×30" in result.output
    assert "FLOPs/token training" in result.output


def test_inspect_shrunk_preset():
    result = runner.invoke(
        app, ["inspect", "v1", "dim=128", "n_layers=4", "n_heads=4", "n_kv_heads=4"]
    )
    assert result.exit_code == 0, result.output
    assert "0..3 (DecoderLayer)" in result.output and "LayerNorm" in result.output
    # the keys as smol train takes them (model.dim=...) were "unknown ModelConfig field(s)"
    dotted = runner.invoke(
        app, ["inspect", "v1", "model.dim=128", "model.n_layers=4", "n_heads=4", "n_kv_heads=4"]
    )
    assert dotted.exit_code == 0 and dotted.output == result.output, dotted.output


def test_unknown_preset_is_one_line_and_exit_2():
    proc = smol("inspect", "smollm3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown model preset 'smollm3'" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_shape_and_bad_option_value():
    proc = smol("inspect", "v1", "dim=100", "n_heads=3")
    assert (
        proc.returncode == 2 and "not divisible" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = smol("generate", "hi", "--temperature", "-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_an_empty_prompt_is_one_line():
    """`smol generate ""` was a reshape RuntimeError from the attention."""
    proc = smol("generate", "")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: PROMPT is empty: give some text to continue"
    ), proc.stderr[-2000:]


def test_generate_streams_from_packaged_weights():
    proc = smol("generate", "Once upon a time", "--max-new-tokens", "12", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon a time")
    assert len(proc.stdout.split()) > 8


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors (SmolError) become one line; any other exception is a bug and says where."""
    import pytest

    import smollm.cli as cli

    def broken(*a, **k):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr("smollm.config.ModelConfig.from_preset", broken)
    monkeypatch.setattr("sys.argv", ["smol", "inspect", "full"])
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main()


def test_an_override_value_is_never_silently_cut():
    from smollm.experiment import load_experiment, parse_override

    assert parse_override("data.corpus=/data/c #1") == ("data.corpus", "/data/c #1")
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("tracking.tags=[a, b]") == ("tracking.tags", ["a", "b"])
    exp = load_experiment(["train.max_steps=1", "data.corpus=/data/c #1", "tracking.name=a: b"])
    assert exp.data.corpus == "/data/c #1" and exp.tracking.name == "a: b"


def test_sweep_show_is_a_real_subcommand():
    result = runner.invoke(app, ["sweep", "--help"])
    assert result.exit_code == 0 and "run" in result.output and "show" in result.output


@pytest.mark.parametrize(
    "text,message",
    [("model: 3\n", "b.yaml: model: expected a mapping of its keys, got 3"),
     ("train: [1, 2]\n", "b.yaml: train: expected a mapping of its keys, got [1, 2]"),
     ("train:\n  eval_tasks: 3\n", "train.eval_tasks: expected a list, e.g. [a, b]")],
)  # fmt: skip
def test_a_section_of_the_wrong_shape_is_named(tmp_path, monkeypatch, text, message):
    """OmegaConf said "Merge error: int is not a subclass of ModelSection", naming no key."""
    from smollm.experiment import load_experiment

    monkeypatch.chdir(tmp_path)
    Path("b.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_experiment("b.yaml")
    assert str(e.value) == message
    with pytest.raises(ConfigError, match=re.escape("data: expected a mapping of its keys, got 3")):
        load_experiment(["data=3"])
