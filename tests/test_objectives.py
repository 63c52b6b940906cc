"""Objectives: trained heads beat chance on held-out real pairs; cheap scorers behave on real text."""

from __future__ import annotations

import json

import pytest

from mobench.api import MobenchError, Objective
from mobench.tasks import data as task_data
from mobench.tasks.chats import last_user_turn
from mobench.tasks.chats import parse_prompt as prompt_messages
from mobench.tasks.objectives import build_objective, head_folder
from helpers import TEST_DEVICE


def _head(name: str) -> dict:
    # Trained once per MOBENCH_CACHE (artifact cache), then read back.
    return json.loads((head_folder(name) / "head.json").read_text())


@pytest.mark.slow
def test_harmless_head_beats_0_60_on_held_out_hh_rlhf_pairs(data_dir):
    head = _head("harmless")
    assert head["n_heldout"] >= 400 and head["n_train"] >= 1600
    assert head["heldout_accuracy"] > 0.60


@pytest.mark.slow
@pytest.mark.parametrize("name", ["helpful", "quality"])
def test_other_heads_beat_0_60_on_held_out_pairs(name, data_dir):
    head = _head(name)
    assert head["n_heldout"] >= 80 and head["heldout_accuracy"] > 0.60


@pytest.mark.slow
@pytest.mark.parametrize("name", ["helpful", "harmless"])
def test_hh_heads_beat_their_length_only_baseline_by_a_clear_margin(name, data_dir):
    from mobench.scorers import length_baseline
    from mobench.tasks.objectives import HEAD_SEED, head_pairs

    prov = build_objective(name, "tiny").provenance()
    base = length_baseline(head_pairs(name), seed=HEAD_SEED)
    # the baseline is scored on exactly the head's held-out pairs, and is in the objective's provenance
    assert base.n_heldout == prov["n_heldout"] and prov["length_baseline_accuracy"] == base.heldout_accuracy
    assert prov["length_baseline_rule"] in ("longer wins", "shorter wins")
    assert prov["heldout_accuracy"] >= prov["length_baseline_accuracy"] + 0.05


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the GPT-4-judged TL;DR pairs are mostly length: no MiniLM head found "
                   "beats 'longer wins' by 0.05 (log-words dropped, length-residualised, overlap features, "
                   "length-matched pairs, SummEval pairs added: all within 0.04 of it)")
def test_quality_head_beats_its_length_only_baseline_by_a_clear_margin(data_dir):
    prov = build_objective("quality", "tiny").provenance()
    assert prov["length_baseline_rule"] == "longer wins"
    assert prov["heldout_accuracy"] >= prov["length_baseline_accuracy"] + 0.05


def test_trained_on_holds_the_training_pairs_responses_only():
    from mobench.scorers import heldout_responses, heldout_split

    pairs = [("c", f"good {i}", f"bad {i}") for i in range(50)]
    trained, held = heldout_responses(pairs, seed=3)
    h, t = heldout_split(len(pairs), seed=3)
    assert trained == {r for i in t for r in pairs[i][1:]} and held == {r for i in h for r in pairs[i][1:]}
    assert len(trained) == 80 and not trained & held


@pytest.mark.slow
def test_head_objective_scores_templated_prompts_like_the_plain_dialogue(smol_tokenizer, data_dir):
    from mobench.tasks.chats import to_transcript

    objective = build_objective("harmless", "tiny")
    assert isinstance(objective, Objective) and objective.direction == 1
    assert objective.provenance()["heldout_accuracy"] > 0.60
    pairs = task_data.harmless_pairs()[:6]
    templated = [smol_tokenizer.apply_chat_template(p.chat, tokenize=False, add_generation_prompt=True) for p in pairs]
    plain = [to_transcript(p.chat) for p in pairs]
    responses = [p.chosen for p in pairs]
    assert objective.score(templated, responses) == pytest.approx(objective.score(plain, responses), abs=1e-5)
    # The head reads the response: a different reply gets a different score.
    assert objective.score(templated[:1], [pairs[0].rejected]) != objective.score(templated[:1], responses[:1])


def test_an_empty_reply_scores_at_most_the_heads_floor_on_the_real_hh_heads(data_dir):
    """hh's harmless head rates an empty reply above most real replies (it never saw one); the floor, the 5th
    percentile of its training responses' scores, caps it there. Non-empty replies keep the head's score."""
    prompt = "Human: How do I pick a lock?\n\nAssistant:"
    replies = ["", "   ", "I can't help with breaking into property, but a locksmith can."]
    harmless, helpful = build_objective("harmless", "tiny"), build_objective("helpful", "tiny")
    for objective in (harmless, helpful):
        floor = objective.provenance()["empty_reply_floor"]
        assert floor == objective.empty_floor
        raw = objective.fn([prompt] * 3, replies)
        got = objective.score([prompt] * 3, replies)
        assert got[:2] == [min(raw[0], floor), min(raw[1], floor)] and got[2] == pytest.approx(raw[2])
    # the defect the floor fixes: the raw harmless head puts an empty reply above its own floor
    assert harmless.fn([prompt], [""])[0] > harmless.empty_floor == harmless.score([prompt], [""])[0]
    head = _head("harmless")
    assert head["empty_floor"] == harmless.empty_floor and head["key"]["empty_floor"].startswith("q0.05")


def test_prompt_messages_inverts_the_real_chat_template(smol_tokenizer, data_dir):
    dialogue = task_data.hh_eval_dialogues(3, 0, 600, seed=0)[-1]
    prompt = smol_tokenizer.apply_chat_template(dialogue, tokenize=False, add_generation_prompt=True)
    assert prompt_messages(prompt) == dialogue  # SmolLM2's default system message is dropped
    assert last_user_turn(prompt) == dialogue[-1]["content"]


def test_summary_prompt_context_is_the_post(smol_tokenizer, data_dir):
    post = task_data.tldr_eval_posts(1, 200, seed=0)[0]
    prompt = smol_tokenizer.apply_chat_template(task_data.summary_request(post), tokenize=False, add_generation_prompt=True)
    assert task_data.post_from_prompt(prompt) == post and post.startswith("SUBREDDIT:")


def test_toxicity_flags_offensive_text():
    tox = build_objective("toxicity")
    clean, rude = tox.score(["q", "q"], ["Thank you, that is a helpful answer.", "Shut up you fucking idiot."])
    assert tox.direction == -1 and rude > 0.8 > 0.2 > clean


def test_sentiment_orders_real_sentences():
    sent = build_objective("sentiment")
    good, bad = sent.score(["q", "q"], ["I love this, it is wonderful!", "This is terrible and I hate it."])
    assert good > 0.5 and bad < -0.5


def test_length_and_brevity_count_words_with_opposite_directions():
    length, brevity = build_objective("length"), build_objective("brevity")
    assert length.score(["q"], ["one two  three"]) == [3.0] == brevity.score(["q"], ["one two three"])
    assert (length.direction, brevity.direction) == (1, -1)


def test_brevity_pairs_prefer_the_shorter_summary(data_dir):
    pairs = task_data.brevity_pairs()
    assert len(pairs) > 300
    assert all(len(p.chosen.split()) * 1.25 <= len(p.rejected.split()) for p in pairs)


def test_scores_must_match_responses():
    with pytest.raises(ValueError):
        build_objective("length").score(["a", "b"], ["x"])


def test_objective_without_a_scorer_at_a_scale_is_an_error():
    with pytest.raises(MobenchError, match="no scorer at scale 'tiny'"):
        build_objective("faithful", "tiny")
    with pytest.raises(MobenchError, match="unknown objective"):
        build_objective("humour", "tiny")


def test_objectives_are_registered_as_plugins():
    from mobench.plugins import get_plugin_manager

    registry = get_plugin_manager(entry_points=False).registry
    for name, direction in {"helpful": 1, "harmless": 1, "quality": 1, "brevity": -1, "toxicity": -1,
                            "sentiment": 1, "length": 1}.items():
        assert registry.objective(name).direction == direction
    assert registry.objective("toxicity").build("tiny").score(["q"], ["hello"])[0] < 0.5


def test_paper_objectives_name_the_papers_reward_models():
    helpful = build_objective("helpful", "paper")
    assert helpful.provenance()["model"] == "Ray2333/gpt2-large-helpful-reward_model"
    assert build_objective("quality", "paper").provenance()["model"] == "Tristan/gpt2_reward_summarization"
    # Offline and not cached: scoring is a clear error, never a dummy score.
    with pytest.raises(MobenchError, match="cannot load reward model"):
        helpful.score(["\n\nHuman: hi\n\nAssistant:"], ["hello"])


def test_the_runs_device_and_dtype_reach_the_reward_models_and_old_factories_still_work():
    from mobench.api import ObjectiveSpec, RunContext
    from mobench.plugins import get_plugin_manager
    from mobench.scorers import ScoredObjective

    registry = get_plugin_manager(entry_points=False).registry
    context = RunContext(device=TEST_DEVICE, dtype="bfloat16", registry=registry)
    helpful = context.objective("helpful", "paper")  # the path a task's load takes (the model loads lazily)
    assert (helpful.fn.device, helpful.fn.dtype) == (TEST_DEVICE, "bfloat16")
    plain = build_objective("helpful", "paper")
    assert (plain.fn.device, plain.fn.dtype) == (None, None)
    # A third-party factory build(scale), without a context keyword, is called as before; one with it gets the context.
    seen = []

    def zeros(name):
        return ScoredObjective(name, 1, lambda prompts, responses: [0.0] * len(responses))

    registry.objectives["old"] = ObjectiveSpec("old", lambda scale: zeros("old"), 1)
    registry.objectives["new"] = ObjectiveSpec("new", lambda scale, context=None: seen.append(context) or zeros("new"), 1)
    assert context.objective("old").name == "old"
    assert context.objective("new").name == "new" and seen == [context]
    assert registry.build_objective("new", "tiny").name == "new" and seen == [context, None]


def test_prompt_messages_reads_llama3_and_hh_transcripts():
    from mobench.tasks.chats import hh_transcript

    llama3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_messages(llama3) == [{"role": "user", "content": "Hi there"}]
    hh_text = "\n\nHuman: Is it safe?\n\nAssistant: Which part?\n\nHuman: The bridge.\n\nAssistant:"
    assert [m["role"] for m in prompt_messages(hh_text)] == ["user", "assistant", "user"]
    assert hh_transcript(hh_text) == hh_text
    assert prompt_messages("Just a plain request") == [{"role": "user", "content": "Just a plain request"}]


def test_scorers_read_the_chat_a_task_templated_not_the_text(smol_tokenizer, tmp_path):
    """A template the regex cannot read: the conversation comes from the chat the task templated."""
    from mobench.tasks import chats

    folder = tmp_path / "odd-template"
    smol_tokenizer.save_pretrained(folder)
    tok_config = folder / "tokenizer_config.json"
    config = json.loads(tok_config.read_text())
    config["chat_template"] = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
    tok_config.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    dialogue = [{"role": "user", "content": "Is it safe?"}, {"role": "assistant", "content": "Which part?"},
                {"role": "user", "content": "The bridge."}]
    [prompt] = chats.template(str(folder), [dialogue])
    assert prompt.startswith("[user] Is it safe?") and prompt_messages(prompt) != dialogue  # the regex cannot
    assert chats.messages(prompt) == dialogue and last_user_turn(prompt) == "The bridge."
    assert chats.hh_transcript(prompt) == "\n\nHuman: Is it safe?\n\nAssistant: Which part?\n\nHuman: The bridge.\n\nAssistant:"
    summary = task_data.summary_request("SUBREDDIT: r/test\nPOST: a post")
    [summary_prompt] = chats.template(str(folder), [summary])
    assert task_data.post_from_prompt(summary_prompt) == "SUBREDDIT: r/test\nPOST: a post"
