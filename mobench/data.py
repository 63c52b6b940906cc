"""Data sources for tasks: declare where a data set lives, read it through ``datasets``.

A task declares its data sets as :class:`Source` objects gathered in a :class:`Sources` catalogue
(the built-in tasks' catalogue is ``mobench.tasks.sources.SOURCES``); a third-party task does the same::

    from mobench.data import HubFile, Source, Sources

    SOURCES = Sources([Source("my-prefs", "my-prefs/test.jsonl", "json",
                              hub=HubFile("me/my-prefs", "test.jsonl", "json"), license="MIT")])
    rows = SOURCES.load("my-prefs")          # a datasets.Dataset
    SOURCES.provenance("my-prefs")           # for the task's provenance (written into manifests)

A source resolves to its file under ``MOBENCH_DATA_DIR`` when that variable is set and the file is
there (CI and offline machines), otherwise to the same data on the Hugging Face Hub by dataset id
(fetched by ``huggingface_hub``, which also serves it from the local hub cache when offline). When
neither works, a :class:`~mobench.api.MobenchError` names both ways to provide the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mobench.api import MobenchError

DATA_ENV = "MOBENCH_DATA_DIR"


@dataclass(frozen=True)
class HubFile:
    """Where the same data lives on the Hub: dataset repo, revision, file, builder and row adapter."""

    repo: str
    filename: str
    builder: str
    revision: str = "main"
    field: str | None = None
    # Maps a hub row to the local file's row schema, when the hub copy is laid out differently.
    adapter: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Source:
    """A real data set: its file under ``MOBENCH_DATA_DIR``, how ``datasets`` reads it, its hub copy.

    ``local``: the path below ``MOBENCH_DATA_DIR``; ``builder``: the ``datasets`` builder ("json", "csv",
    "parquet"); ``field``: the JSON key holding the rows, if any; ``hub``: the same data on the Hub (None:
    local only); ``upstream`` and ``license``: where the data comes from, for provenance.
    """

    name: str
    local: str
    builder: str
    field: str | None = None
    hub: HubFile | None = None
    upstream: str = ""
    license: str = ""


def data_dir() -> Path | None:
    """The folder named by ``MOBENCH_DATA_DIR``, or None when unset."""
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def _how_to_provide(source: Source, hub_reason: str | None) -> str:
    local = f"set {DATA_ENV} to a folder holding {source.local}"
    if source.hub is None:
        return f"{local} (this data set has no Hub copy; upstream: {source.upstream})"
    hub = f"go online to fetch it from the Hugging Face Hub dataset {source.hub.repo} ({source.hub.filename})"
    reason = f" [hub: {hub_reason}]" if hub_reason else ""
    return f"{local}, or {hub}{reason}"


def resolve(source: Source) -> tuple[Source, str, str]:
    """Find a source's file: ``(source, local path, origin)`` where origin is "data_dir" or "hub"."""
    folder = data_dir()
    if folder is not None and (folder / source.local).is_file():
        return source, str(folder / source.local), "data_dir"
    hub_reason = None
    if source.hub is not None:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(
                source.hub.repo, source.hub.filename, repo_type="dataset", revision=source.hub.revision
            )
            return source, path, "hub"
        except Exception as exc:  # offline and not cached, unknown repo, no network, ...
            hub_reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]
    where = f"{DATA_ENV}={folder}" if folder is not None else f"{DATA_ENV} is not set"
    raise MobenchError(f"data set {source.name!r} not found ({where}): {_how_to_provide(source, hub_reason)}")


def load_source(source: Source):
    """Load a source as a ``datasets.Dataset`` with the local file's columns, wherever it came from."""
    import datasets

    source, path, origin = resolve(source)
    if origin == "hub":
        hub = source.hub
        kwargs = {"field": hub.field} if hub.field else {}
        ds = datasets.load_dataset(hub.builder, data_files=path, split="train", **kwargs)
        if hub.adapter is not None:
            ds = ds.map(hub.adapter, remove_columns=ds.column_names)
        return ds
    kwargs = {"field": source.field} if source.field else {}
    return datasets.load_dataset(source.builder, data_files=path, split="train", **kwargs)


def provenance(source: Source) -> dict[str, Any]:
    """Where a source's rows came from (for manifests): file, origin, upstream, licence."""
    source, path, origin = resolve(source)
    return {"source": source.name, "origin": origin, "file": path, "upstream": source.upstream, "license": source.license}


class Sources:
    """A task's data sources by name: ``get``, ``resolve``, ``load`` and ``provenance`` take the name."""

    def __init__(self, sources: Iterable[Source]):
        self._by_name: dict[str, Source] = {}
        for source in sources:
            if source.name in self._by_name:
                raise ValueError(f"data source {source.name!r} is declared twice")
            self._by_name[source.name] = source

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Source:
        """The source called ``name``; a MobenchError naming the known ones otherwise."""
        if name not in self._by_name:
            raise MobenchError(f"unknown data source {name!r} (known: {', '.join(sorted(self._by_name))})")
        return self._by_name[name]

    def resolve(self, name: str) -> tuple[Source, str, str]:
        """:func:`resolve` of the source called ``name``."""
        return resolve(self.get(name))

    def load(self, name: str):
        """:func:`load_source` of the source called ``name`` (a ``datasets.Dataset``)."""
        return load_source(self.get(name))

    def provenance(self, name: str) -> dict[str, Any]:
        """:func:`provenance` of the source called ``name``."""
        return provenance(self.get(name))
