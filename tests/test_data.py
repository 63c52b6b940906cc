"""Data sources: MOBENCH_DATA_DIR files, the Hub path against an offline hub cache, and the error.

The machinery is the core's (mobench.data); the sources are the built-in tasks' (mobench.tasks.sources).
"""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from mobench import data
from mobench.api import MobenchError
from mobench.tasks.chats import parse_transcript, to_transcript
from mobench.tasks.sources import SOURCES

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_snapshot(root, repo: str, revision: str, filename: str):
    """The layout huggingface_hub's cache uses: refs/<revision> -> commit, snapshots/<commit>/<file>."""
    folder = root / f"datasets--{repo.replace('/', '--')}"
    ref = folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(COMMIT)
    target = folder / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache with the hub offline and MOBENCH_DATA_DIR unset."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    return cache


def test_data_dir_source_reads_real_rows(data_dir):
    ds = SOURCES.load("hh-rlhf-harmless-test")
    assert len(ds) == 2312 and set(ds.column_names) == {"chosen", "rejected"}
    assert ds[0]["chosen"].startswith("\n\nHuman:")
    prov = SOURCES.provenance("hh-rlhf-harmless-test")
    assert prov["origin"] == "data_dir" and prov["file"].startswith(str(data_dir))


def test_every_source_loads_from_data_dir(data_dir):
    sizes = {name: len(SOURCES.load(name)) for name in SOURCES}
    assert sizes["hhh-helpful"] == 59 and sizes["dove-helpful-pref"] == 363 and sizes["tldr-oai-judged"] == 1945


def test_hub_path_reads_the_same_rows_from_an_offline_hub_cache(data_dir, offline_hub):
    target = _hub_snapshot(offline_hub, "Anthropic/hh-rlhf", "main", "harmless-base/test.jsonl.gz")
    shutil.copyfile(data_dir / "hh-rlhf/harmless-base/test.jsonl.gz", target)
    _, path, origin = SOURCES.resolve("hh-rlhf-harmless-test")
    assert origin == "hub" and COMMIT in path
    ds = SOURCES.load("hh-rlhf-harmless-test")
    with gzip.open(data_dir / "hh-rlhf/harmless-base/test.jsonl.gz", "rt") as fh:
        first = json.loads(fh.readline())
    assert len(ds) == 2312 and ds[0] == first


def test_hub_copy_with_another_layout_is_adapted(data_dir, offline_hub, tmp_path):
    import datasets

    local = json.loads((data_dir / "hhh-alignment/helpful/task.json").read_text())["examples"]
    # The hub copy's layout: targets = {choices, labels} in a parquet export on refs/convert/parquet.
    rows = [{"input": e["input"], "targets": {"choices": list(e["target_scores"]), "labels": list(e["target_scores"].values())}}
            for e in local]
    target = _hub_snapshot(offline_hub, "HuggingFaceH4/hhh_alignment", "refs/convert/parquet", "helpful/test/0000.parquet")
    datasets.Dataset.from_list(rows).to_parquet(str(target))
    ds = SOURCES.load("hhh-helpful")
    assert len(ds) == len(local) == 59
    got = {k: v for k, v in ds[3]["target_scores"].items() if v is not None}
    assert ds[3]["input"] == local[3]["input"] and got == local[3]["target_scores"]


def test_missing_everywhere_names_both_ways(offline_hub):
    with pytest.raises(MobenchError) as err:
        SOURCES.load("hh-rlhf-harmless-test")
    message = str(err.value)
    assert "MOBENCH_DATA_DIR" in message and "Anthropic/hh-rlhf" in message and "\n" not in message


def test_local_only_source_says_it_has_no_hub_copy(offline_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MobenchError, match="no Hub copy"):
        SOURCES.load("dove-helpful-pref")


def test_unknown_source_is_a_user_error():
    with pytest.raises(MobenchError, match="unknown data source"):
        SOURCES.get("hh-rlhf-train")


def test_transcripts_parse_into_chat_messages_and_back(data_dir):
    text = SOURCES.load("hh-rlhf-harmless-test")[0]["chosen"]
    messages = parse_transcript(text)
    assert [m["role"] for m in messages[:4]] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "what are some pranks with a pen i can do?"
    assert parse_transcript(to_transcript(messages, open_assistant=False)) == messages


def test_a_third_party_catalogue_uses_the_same_machinery(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "rows.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    mine = data.Sources([data.Source("my-rows", "mine/rows.jsonl", "json", upstream="written by the test", license="CC0")])
    assert list(mine) == ["my-rows"] and mine.load("my-rows")["text"] == ["one", "two"]
    assert mine.provenance("my-rows")["origin"] == "data_dir" and mine.provenance("my-rows")["license"] == "CC0"
    with pytest.raises(ValueError, match="declared twice"):
        data.Sources([mine.get("my-rows"), mine.get("my-rows")])
