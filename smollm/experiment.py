"""OmegaConf at the edge: YAML + dotlist overrides -> typed, validated plain dataclasses.

The YAML schema mirrors the config dataclasses; `model:` takes a `preset` plus overrides of any
`ModelConfig` field. A mistyped key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from smollm.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)


@functools.cache
def schema(cls: type, optional: bool = False) -> type:
    """A mutable OmegaConf schema mirroring a frozen config dataclass (tuples become lists)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Literal:
            tp = str
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):  # n_kv_heads: 4 or "mha"
            tp = typing.Any
        if typing.get_origin(tp) is tuple:
            tp, default = list[str], dataclasses.field(default_factory=lambda d=f.default: list(d))
        else:
            default = dataclasses.field(default=None if optional else f.default)
        if optional:
            tp = typing.Optional[tp]  # noqa: UP045 - OmegaConf reads typing.Optional
        fields.append((f.name, tp, default))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


@functools.cache
def model_schema() -> type:
    """`model:` = a preset name plus optional overrides of every ModelConfig field."""
    base = schema(ModelConfig, optional=True)
    return dataclasses.make_dataclass(
        "ModelSection", [("preset", str, dataclasses.field(default="smollm2-135m"))], bases=(base,)
    )


def experiment_schema() -> Any:
    section = dataclasses.make_dataclass(
        "ExperimentSchema",
        [
            ("model", model_schema(), dataclasses.field(default_factory=model_schema())),
            ("data", schema(DataConfig), dataclasses.field(default_factory=schema(DataConfig))),
            ("train", schema(TrainConfig), dataclasses.field(default_factory=schema(TrainConfig))),
            (
                "tracking",
                schema(TrackingConfig),
                dataclasses.field(default_factory=schema(TrackingConfig)),
            ),
        ],
    )
    return OmegaConf.structured(section)


def config_error(e: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's multi-line message -> one line naming the key."""
    key = getattr(e, "full_key", None)
    first = (str(e).splitlines() or [type(e).__name__])[0]
    if type(e).__name__ == "ConfigKeyError" and key:
        return ConfigError(f"unknown config key {key!r}")
    if "is not a ListConfig" in first:  # a scalar where the schema has a list
        first = "expected a list, e.g. [a, b]"
    return ConfigError(f"{key}: {first}" if key else first)


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003): the value is a YAML scalar or list, except that a
    value YAML would silently cut or reshape (a ' #' comment, an unbraced 'key: value') stays the
    literal string, so `data.corpus=/data/c #1` means that path; a braced `{a: 1}` is a mapping."""
    import yaml

    if not isinstance(item, str):
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    if "#" in raw:
        return key, raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return key, raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return key, float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        return key, raw  # 'a: b' unbraced is text; '{sotu: 0.5, wiki: 0.5}' is a mapping
    return key, value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{'train.lr': 0.004} -> {'train': {'lr': 0.004}}: typed values merge as they are."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override")
        node[leaf] = value
    return out


MAX_YAML_BYTES = 1 << 20  # a config file is a few KB; past 1 MiB it is not one


def load_yaml(path: str | Path, kind: str = "config") -> Any:
    """One YAML config file as OmegaConf, every way it can be bad a one-line ConfigError: missing,
    unreadable, too large, not UTF-8, not YAML, a tag that builds objects, aliases that expand
    past OmegaConf's node limit (an alias bomb), or not a mapping."""
    import io

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: too large ({len(data) / 1e6:.1f} MB; the limit for a {kind} "
                          f"file is {MAX_YAML_BYTES >> 20} MiB)")  # fmt: skip
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.start}: {data[e.start]:#04x})"
        ) from None
    try:
        cfg = OmegaConf.load(io.StringIO(text))
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "expansion exceeds" in first:
            first = "its aliases expand past 10,000 nodes (an alias bomb?)"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top, got a list")
    return cfg


def merge(base: Any, sources: list[Any]) -> Any:
    """Merge YAML files (paths), dicts and dotlists (lists of key=value) onto a structured base."""
    try:
        merged = base
        for src in sources:
            if isinstance(src, list):  # key=value items change single weights: merged
                part = OmegaConf.create(nest(dict(parse_override(s) for s in src)))
                _check_sections(part, "")
                merged = OmegaConf.merge(merged, part)
                continue
            part = load_yaml(src) if isinstance(src, (str, Path)) else OmegaConf.create(src)
            _check_sections(part, f"{src}: " if isinstance(src, (str, Path)) else "")
            merged = OmegaConf.merge(_cleared(merged, part), part)
        return merged
    except OmegaConfBaseException as e:
        raise config_error(e) from None


def _check_sections(part: Any, where: str) -> None:
    """Each section an experiment file sets (model, data, train, tracking) is a mapping: OmegaConf
    would say "Merge error: int is not a subclass of ModelSection", naming neither."""
    for section in ("model", "data", "train", "tracking"):
        value = part.get(section)
        if value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{where}{section}: expected a mapping of its keys, got {value!r}")


# mappings a later file or mapping replaces whole rather than merges into (a variant's mixture is
# its own, not the base's with some weights changed); a key=value override still changes one weight
REPLACED = (("data", "mixture"), ("data", "val_weights"))


def _cleared(merged: Any, part: Any) -> Any:
    """`merged` with every REPLACED key that `part` sets emptied first."""
    hits = [(s, k) for s, k in REPLACED if k in (part.get(s) or {}) and s in merged]
    if not hits:
        return merged
    merged = merged.copy()
    for section, key in hits:
        merged[section][key] = None
    return merged


def to_experiment(cfg: Any) -> ExperimentConfig:
    """A merged OmegaConf experiment -> validated ExperimentConfig."""
    try:
        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise config_error(e) from None
    model = d.pop("model")
    preset = model.pop("preset")
    return ExperimentConfig(
        model=ModelConfig.from_preset(preset, **{k: v for k, v in model.items() if v is not None}),
        data=DataConfig(**d["data"]),
        train=TrainConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d["train"].items()}
        ),
        tracking=TrackingConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d["tracking"].items()}
        ),
        preset=preset,
    )


def read_mapping(path: str | Path, kind: str, valid: set[str]) -> dict[str, Any]:
    """A YAML file holding a mapping whose keys are all in `valid` (ablation and sweep files)."""
    try:
        raw = OmegaConf.to_container(load_yaml(path, kind), resolve=True)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        raise config_error(e) from None
    return check_mapping(raw, valid, f"{path}:", kind)


def base_section(raw: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """The `base:` experiment of an ablation, ladder or sweep file ({} when absent), checked to
    be a mapping."""
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: expected a mapping of model, data, train, tracking")
    return base


def check_mapping(raw: Any, valid: set[str], where: str, kind: str) -> dict[str, Any]:
    """`raw` itself, if it is a mapping whose keys are all in `valid`; else one line naming them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} expected a mapping of {', '.join(sorted(valid))}")
    unknown = set(raw) - valid
    if unknown:
        raise ConfigError(
            f"{where} unknown {kind} key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}"
        )
    return raw


def load_experiment(*sources: Any) -> ExperimentConfig:
    """ExperimentConfig from YAML paths, dicts and dotlists, later ones winning."""
    return to_experiment(merge(experiment_schema(), [s for s in sources if s is not None]))


__all__ = [
    "base_section",
    "load_experiment",
    "merge",
    "nest",
    "parse_override",
    "read_mapping",
    "to_experiment",
]
