"""The built-in tasks' data sources: one name per real data set (read with :mod:`mobench.data`)."""

from __future__ import annotations

from typing import Any

from mobench.data import HubFile, Source, Sources


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


def _dove(name: str, path: str) -> Source:
    return Source(name, f"dove/{path}", "json", upstream="Hritikbansal/dove@02e53a0", license="MIT")


SOURCES = Sources([
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
    _dove("dove-helpful-test", "anthropic_helpful/test.jsonl"),
    _dove("dove-helpful-pref", "anthropic_helpful/val_conditional_pref.jsonl"),
    _dove("dove-tldr-test", "tldr/test.jsonl"),
    Source("tldr-oai-judged", "tldr-oai/oai1b.csv_judged.csv", "csv",
           upstream="vwxyzjn/summarize_from_feedback_details@c26c3a8 eval/", license="MIT"),
    Source("xstest-prompts", "xstest/xstest_prompts.csv", "csv",
           upstream="paul-rottger/exaggerated-safety@d7bb5bd", license="CC-BY-4.0"),
    Source("summeval", "summeval/summeval.jsonl", "json",
           upstream="maiush/PPairS@0beef74 data/", license="MIT"),
])
