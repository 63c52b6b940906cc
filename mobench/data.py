"""Data sources: one name per real data set, read through ``datasets``.

A source resolves to a file under ``MOBENCH_DATA_DIR`` when that variable is set and the file is
there (CI and offline machines), otherwise to the same data on the Hugging Face Hub by dataset id
(fetched by ``huggingface_hub``, which also serves it from the local hub cache when offline). When
neither works, a :class:`~mobench.api.MobenchError` names both ways to provide the data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    """A real data set: its file under ``MOBENCH_DATA_DIR``, how ``datasets`` reads it, its hub copy."""

    name: str
    local: str
    builder: str
    field: str | None = None
    hub: HubFile | None = None
    upstream: str = ""
    license: str = ""


def _hhh_from_hub(row: dict[str, Any]) -> dict[str, Any]:
    # HuggingFaceH4/hhh_alignment stores targets as {choices, labels}; BIG-bench as {choice: label}.
    targets = row["targets"]
    return {"input": row["input"], "target_scores": dict(zip(targets["choices"], targets["labels"]))}


def _hhh(subset: str) -> Source:
    return Source(
        name=f"hhh-{subset}",
        local=f"hhh-alignment/{subset}/task.json",
        builder="json",
        field="examples",
        # The parquet export of the hub copy (same 59/58/61/43 pairs, written by Anthropic).
        hub=HubFile("HuggingFaceH4/hhh_alignment", f"{subset}/test/0000.parquet", "parquet",
                    revision="refs/convert/parquet", adapter=_hhh_from_hub),
        upstream="BIG-bench hhh_alignment (bigbench==1.0.0)",
        license="Apache-2.0",
    )


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "hh-rlhf-harmless-test",
            "hh-rlhf/harmless-base/test.jsonl.gz",
            "json",
            hub=HubFile("Anthropic/hh-rlhf", "harmless-base/test.jsonl.gz", "json"),
            upstream="anthropics/hh-rlhf harmless-base test",
            license="MIT",
        ),
        _hhh("helpful"),
        _hhh("harmless"),
        # The dove, TL;DR-judged, XSTest and SummEval files have no copy with the same content on
        # the Hub; they come from GitHub and are read from MOBENCH_DATA_DIR only.
        Source("dove-helpful-test", "dove/anthropic_helpful/test.jsonl", "json",
               upstream="Hritikbansal/dove@02e53a0", license="MIT"),
        Source("dove-helpful-pref", "dove/anthropic_helpful/val_conditional_pref.jsonl", "json",
               upstream="Hritikbansal/dove@02e53a0", license="MIT"),
        Source("dove-tldr-test", "dove/tldr/test.jsonl", "json",
               upstream="Hritikbansal/dove@02e53a0", license="MIT"),
        Source("tldr-oai-judged", "tldr-oai/oai1b.csv_judged.csv", "csv",
               upstream="vwxyzjn/summarize_from_feedback_details@c26c3a8 eval/", license="MIT"),
        Source("xstest-prompts", "xstest/xstest_prompts.csv", "csv",
               upstream="paul-rottger/exaggerated-safety@d7bb5bd", license="CC-BY-4.0"),
        Source("summeval", "summeval/summeval.jsonl", "json",
               upstream="maiush/PPairS@0beef74 data/", license="MIT"),
    ]
}


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    if name not in SOURCES:
        raise MobenchError(f"unknown data source {name!r} (known: {', '.join(sorted(SOURCES))})")
    return SOURCES[name]


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


def resolve(name: str) -> tuple[Source, str, str]:
    """Find a source's file: ``(source, local path, origin)`` where origin is "data_dir" or "hub"."""
    source = get_source(name)
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
    raise MobenchError(f"data set {name!r} not found ({where}): {_how_to_provide(source, hub_reason)}")


def load_source(name: str):
    """Load a source as a ``datasets.Dataset`` with the local file's columns, wherever it came from."""
    import datasets

    source, path, origin = resolve(name)
    if origin == "hub":
        hub = source.hub
        kwargs = {"field": hub.field} if hub.field else {}
        ds = datasets.load_dataset(hub.builder, data_files=path, split="train", **kwargs)
        if hub.adapter is not None:
            ds = ds.map(hub.adapter, remove_columns=ds.column_names)
        return ds
    kwargs = {"field": source.field} if source.field else {}
    return datasets.load_dataset(source.builder, data_files=path, split="train", **kwargs)


def provenance(name: str) -> dict[str, Any]:
    """Where a source's rows came from (for manifests): file, origin, upstream, licence."""
    source, path, origin = resolve(name)
    return {"source": name, "origin": origin, "file": path, "upstream": source.upstream, "license": source.license}


# --- HH-style transcripts -------------------------------------------------------------------------

_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _TURN.split(text)
    messages = []
    # parts = [prefix, role, content, role, content, ...]
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def to_transcript(messages: list[dict[str, str]], open_assistant: bool = True) -> str:
    """The HH-RLHF transcript form of chat messages, ending with an open "Assistant:" turn."""
    names = {"user": "Human", "assistant": "Assistant"}
    text = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)
    return text + ("\n\nAssistant:" if open_assistant else "")
