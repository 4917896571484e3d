"""The SmolLM2 tokenizer: from the Hub when reachable, else from the packaged GGUF (converted once)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from smollm import assets
from smollm.config import SmolError
from smollm.rundir import RunDir

ENDOFTEXT = "<|endoftext|>"  # id 0 in SmolLM2's vocabulary: the document separator


class TokenizerError(SmolError):
    """A tokenizer directory whose files cannot be read."""


def from_dir(path: str | Path):
    """AutoTokenizer from a local directory; an unreadable tokenizer.json is one line naming it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a truncated or hand-edited tokenizer.json, a bad config
        raise TokenizerError(
            f"{_culprit(Path(path))}: cannot be read ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0]}); delete the directory to rebuild it"
        ) from None


def _culprit(path: Path) -> Path:
    """The file of a tokenizer directory that does not parse as JSON (else tokenizer.json)."""
    import json

    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        try:
            json.loads((path / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return path / name
    return path / "tokenizer.json"


def load_tokenizer(name: str = "smollm2"):
    """The SmolLM2 tokenizer (49,152 tokens): Hub when reachable, the packaged GGUF offline.

    `name` may also be a local tokenizer directory or a Hub id.
    """
    from transformers import AutoTokenizer

    if name != "smollm2":
        return from_dir(name) if Path(name).is_dir() else AutoTokenizer.from_pretrained(name)
    if assets.hub_reachable():
        try:
            return AutoTokenizer.from_pretrained(assets.HUB_MODEL_ID)
        except OSError:
            pass  # reachable but failing (rate limit, proxy): the packaged copy is the same vocabulary
    return from_dir(_converted_gguf_tokenizer())


def _converted_gguf_tokenizer() -> Path:
    """Convert the GGUF's tokenizer to HF files once (≈4 s) and reuse them afterwards."""
    from transformers import AutoTokenizer

    target = assets.cache_root() / "tokenizers" / "smollm2-gguf"
    if (target / "tokenizer.json").is_file():
        return target
    gguf = assets.packaged_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.model_max_length = 1 << 30  # corpora are tokenised whole, then packed into blocks
    with assets.atomic_dir(target) as tmp:
        tok.save_pretrained(tmp)
    return target


def model_tokenizer(src: str | None):
    """The tokenizer that goes with a model source: a run's or HF dir's own, else SmolLM2's."""

    if src:
        path = Path(src)
        run = RunDir(path)
        for candidate in (run.tokenizer, path):  # a run directory's, or an HF dir's
            if candidate.is_dir() and (candidate / "tokenizer.json").is_file():
                return from_dir(candidate)
        if run.is_run():  # its model's vocabulary is its own tokenizer's: SmolLM2's would not fit
            raise TokenizerError(
                f"{path}: the run has no tokenizer ({run.tokenizer.name}/tokenizer.json is "
                f"missing); rebuild it with `smol train {run.config} --run-dir {path}`"
            )
    return load_tokenizer()


def stop_ids(tok) -> list[int]:
    """Token ids that end a generation: the tokenizer's EOS and <|endoftext|>."""
    return sorted({tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)} - {None})


def decode_stream(tok, ids: Iterable[int]) -> Iterator[str]:
    """New text as token ids arrive; a half-decoded UTF-8 character is held back until complete."""
    seen: list[int] = []
    shown = ""
    for i in ids:
        seen.append(i)
        text = tok.decode(seen, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            yield text[len(shown) :]
            shown = text
