"""Model loading: the real SmolLM2 from the wheel, sequence-classification reward models, MiniLM."""

from __future__ import annotations

import pytest

from mobench.api import MobenchError
from mobench.models import (
    SMOLLM2_ALIAS,
    load_causal_lm,
    load_sentence_encoder,
    load_sequence_classifier,
    resolve_model,
)

from helpers import TEST_DEVICE


@pytest.mark.slow
def test_real_smollm2_generates_from_a_real_hh_prompt(data_dir):
    import torch

    from mobench.tasks import data as task_data

    model, tok = load_causal_lm(SMOLLM2_ALIAS, device=TEST_DEVICE)
    assert model.dtype == torch.float32 and sum(p.numel() for p in model.parameters()) > 100_000_000
    dialogue = task_data.hh_eval_dialogues(1, 0, 600, seed=0)[0]
    prompt = tok.apply_chat_template(dialogue, tokenize=False, add_generation_prompt=True)
    assert dialogue[-1]["content"] in prompt and prompt.endswith("<|im_start|>assistant\n")
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # A trained model answers in words; a broken load (random or mis-dequantized weights) does not.
    words = [w for w in reply.split() if w.isalpha()]
    assert len(words) >= 5, reply


def _tiny_reward_model(folder, tokenizer, arch: str):
    """A randomly initialised GPT-2 or BART sequence classifier saved like a hub reward model."""
    import torch
    from transformers import BartConfig, BartForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2, num_labels=1)
        model = GPT2ForSequenceClassification(config)
    else:
        config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=512,
                            id2label={0: "HALLUCINATED", 1: "FAITHFUL"}, label2id={"HALLUCINATED": 0, "FAITHFUL": 1},
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                            bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
        model = BartForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def gpt2_tokenizer_without_pad(smol_tokenizer):
    """SmolLM2's byte-level BPE tokenizer with its pad token removed, as GPT-2 reward models ship."""
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.pad_token = None
    return tok


def test_gpt2_reward_model_scores_real_text_batch_invariantly(tmp_path, gpt2_tokenizer_without_pad, data_dir):
    from mobench.scorers import SequenceClassifierScorer
    from mobench.tasks.chats import hh_transcript, to_transcript
    from mobench.tasks import data as task_data

    folder = _tiny_reward_model(tmp_path / "rm", gpt2_tokenizer_without_pad, "gpt2")
    model, tok = load_sequence_classifier(str(folder), device=TEST_DEVICE)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id and tok.padding_side == "right"

    pairs = task_data.harmless_pairs()[:4]
    prompts = [to_transcript(p.chat) for p in pairs]
    responses = [p.chosen for p in pairs[:2]] + [p.rejected for p in pairs[2:]]
    scorer = SequenceClassifierScorer(str(folder), hh_transcript, "text_pair", batch_size=4, device=TEST_DEVICE)
    batched = scorer(prompts, responses)
    one_by_one = [SequenceClassifierScorer(str(folder), hh_transcript, "text_pair", batch_size=1, device=TEST_DEVICE)([p], [r])[0]
                  for p, r in zip(prompts, responses)]
    # Padding must not change a score: the classifier reads each sequence's own last token.
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert len(set(round(s, 5) for s in batched)) == 4


def _byte_level_bart_tokenizer():
    """A BART tokenizer over the 256 byte-level symbols (no merges): real BART pair encoding, tiny vocab."""
    from tokenizers import pre_tokenizers
    from transformers import BartTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    vocab["<mask>"] = len(vocab)
    return BartTokenizer(vocab=vocab, merges=[])


def test_bart_faithfulness_detector_path_reads_the_requested_logit(tmp_path, smol_tokenizer, data_dir):
    from mobench.scorers import SequenceClassifierScorer
    from mobench.tasks import data as task_data

    folder = _tiny_reward_model(tmp_path / "bart", _byte_level_bart_tokenizer(), "bart")
    pairs = task_data.quality_pairs()[:3]
    prompts = [smol_tokenizer.apply_chat_template(p.chat, tokenize=False, add_generation_prompt=True) for p in pairs]
    summaries = [p.chosen for p in pairs]
    label0 = SequenceClassifierScorer(str(folder), task_data.post_from_prompt, "summary_post_pair", 0, device=TEST_DEVICE)(prompts, summaries)
    label1 = SequenceClassifierScorer(str(folder), task_data.post_from_prompt, "summary_post_pair", 1, device=TEST_DEVICE)(prompts, summaries)
    assert len(label1) == 3 and label0 != label1
    one = SequenceClassifierScorer(str(folder), task_data.post_from_prompt, "summary_post_pair", 1, batch_size=1, device=TEST_DEVICE)
    assert [one([p], [s])[0] for p, s in zip(prompts, summaries)] == pytest.approx(label1, abs=1e-4)
    with pytest.raises(MobenchError, match="has 2 labels"):
        SequenceClassifierScorer(str(folder), task_data.post_from_prompt, "summary_post_pair", 2, device=TEST_DEVICE)(prompts, summaries)


def test_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(MobenchError, match="cannot load reward model"):
        load_sequence_classifier("nobody-here/no-such-reward-model", device=TEST_DEVICE)


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(MobenchError, match="known alias"):
        resolve_model("smollm3")


def test_sentence_encoder_is_loaded_once_and_embeds_meaningfully():
    encoder = load_sentence_encoder()
    assert load_sentence_encoder() is encoder and encoder.max_seq_length == 128
    a, b, c = encoder.encode(["How do I bake bread?", "What is a recipe for baking bread?", "The stock market fell today."],
                             normalize_embeddings=True)
    assert float(a @ b) > float(a @ c) + 0.2
