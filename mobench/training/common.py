"""Pieces every trainer shares: LoRA configs, artifact-key parts, the train-and-save skeleton, trl datasets, adapter loading."""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mobench.api import Method, MobenchError, Preference, PreferencePair, RunContext
from mobench.options import Options, option

# The libraries whose versions change what a trainer produces; part of every artifact key.
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets")
# The training record saved beside every trained adapter (seconds, loss log), read by expert_record.
TRAIN_INFO = "mobench-train.json"


@dataclass(frozen=True)
class LoraBudget(Options):
    """The LoRA adapter every shared trainer puts on the policy."""

    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int | None = option(None, "LoRA alpha (None: 2 x rank)")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target: str = option("all-linear", "modules that get an adapter (peft's target_modules)")

    def check(self) -> None:
        if self.lora_r < 1:
            raise MobenchError(f"lora_r must be a positive integer, not {self.lora_r!r}")
        if not 0 <= self.lora_dropout < 1:
            raise MobenchError(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")

    def require_at_least_one(self, trainer: str, names: Sequence[str]) -> None:
        """A MobenchError naming the first of the integer fields ``names`` that is below 1."""
        for name in names:
            if getattr(self, name) < 1:
                raise MobenchError(f"{trainer} {name} must be at least 1, not {getattr(self, name)!r}")


def lora_config(budget: LoraBudget):
    """A peft LoraConfig for a causal LM from a budget's LoRA fields (lora_alpha None: 2 x rank)."""
    from peft import LoraConfig

    r = int(budget.lora_r)
    if r <= 0:
        raise MobenchError(f"lora_r must be a positive integer, not {budget.lora_r!r}")
    return LoraConfig(
        r=r,
        # alpha = 2r is the usual choice; the merge code reads the scaling from the saved config anyway.
        lora_alpha=int(budget.lora_alpha or 2 * r),
        lora_dropout=float(budget.lora_dropout),
        target_modules=budget.lora_target,
        bias="none",
        task_type="CAUSAL_LM",
    )


def lora_key(budget: LoraBudget) -> dict[str, Any]:
    """The LoRA hyper-parameters as they enter an artifact key (alpha filled in)."""
    cfg = lora_config(budget)
    target = cfg.target_modules
    return {
        "r": cfg.r,
        "alpha": cfg.lora_alpha,
        "dropout": cfg.lora_dropout,
        "target": sorted(target) if isinstance(target, (set, list, tuple)) else target,
    }


def policy_fingerprint(policy: str) -> dict[str, Any]:
    """What identifies the base model in a key: the alias or hub id, or a local folder's file contents."""
    if not os.path.isdir(policy):
        return {"policy": policy}
    # A local folder (tests, user checkpoints) is identified by its content, not by where it lies.
    h = hashlib.sha256()
    for path in sorted(Path(policy).iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            h.update(path.name.encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return {"policy": "local-folder", "content_sha256": h.hexdigest()}


def context_seed(context: RunContext | None) -> int:
    """The run's seed (0 without a context)."""
    return int(context.seed if context is not None else 0)


def key_environment(policy: str, context: RunContext | None) -> dict[str, Any]:
    """The artifact-key parts every trainer shares: base model, seed, precision on the device, library versions."""
    from mobench.artifacts import library_versions
    from mobench.models import default_dtype

    return {
        "base": policy_fingerprint(policy),
        "seed": context_seed(context),
        "precision": str(context_dtype(context) or default_dtype(resolve_device(context))).replace("torch.", ""),
        "versions": library_versions(*TRAINING_LIBRARIES),
    }


def load_for_training(policy: str, context: RunContext | None):
    """``(model, tokenizer, device, seed)``: torch seeded from the run, the policy loaded on the run's device at
    the run's ``--dtype`` (the device's default without one; :func:`key_environment` keys the precision)."""
    import torch

    from mobench.models import load_causal_lm

    device = resolve_device(context)
    seed = context_seed(context)
    torch.manual_seed(seed)
    model, tok = load_causal_lm(policy, device=device, dtype=context_dtype(context))
    return model, tok, device, seed


def train_and_save(trainer, out: str | Path, device: str, record: dict[str, Any], log_keys: Sequence[str] = ("loss",)) -> dict[str, Any]:
    """Run a trl trainer (console printers dropped), save its adapter into ``out`` with the training record.

    The record is ``record`` plus train_seconds, device, steps, train_loss and the log entries that hold
    any of ``log_keys``; it is written to ``out/TRAIN_INFO`` and returned.
    """
    silence_console(trainer)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(str(out))
    record = {
        **record,
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "log": [h for h in trainer.state.log_history if any(k in h for k in log_keys)],
    }
    (Path(out) / TRAIN_INFO).write_text(json.dumps(record, indent=2, default=str))
    return record


def weights_label(weights: Sequence[float]) -> str:
    """``w=(0.5, 0.5)``: a preference as progress descriptions show it."""
    return f"w=({', '.join(f'{w:g}' for w in weights)})"


def progress_callback(context: RunContext | None, description: str):
    """A transformers TrainerCallback advancing ``context.progress`` once per optimiser step (None: no-op)."""
    from transformers import TrainerCallback

    progress = context.progress if context is not None else None

    class _ProgressCallback(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if progress is not None:
                self.bar = progress.step(description, total=state.max_steps or args.max_steps or None)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.advance(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _ProgressCallback()


def pairs_dataset(pairs: Sequence[PreferencePair]):
    """A datasets.Dataset in trl's standard preference format (prompt / chosen / rejected columns)."""
    from datasets import Dataset

    if not pairs:
        raise MobenchError("no preference pairs to train on")
    return Dataset.from_dict(
        {
            "prompt": [p.prompt for p in pairs],
            "chosen": [p.chosen for p in pairs],
            "rejected": [p.rejected for p in pairs],
        }
    )


def data_hash(pairs: Sequence[PreferencePair]) -> str:
    """A stable sha256 of the pairs' text, in order, for artifact keys."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def resolve_device(context: RunContext | None) -> str:
    """The context's device, or the default one (cuda when visible, else cpu)."""
    from mobench.models import default_device

    return (context.device if context is not None else None) or default_device()


def context_dtype(context: RunContext | None):
    """The run's ``--dtype`` as a torch dtype, None for the device's default (or without a context).

    Decoding, evaluation and training loads all take it; a trained piece's cache key holds the precision it was
    trained at (:func:`key_environment`), so a bf16 expert never stands in for an fp32 one.
    """
    return context.torch_dtype() if context is not None and hasattr(context, "torch_dtype") else None


def load_adapter(base, adapter_path: str | Path, adapter_name: str = "default"):
    """Attach a saved LoRA adapter to ``base`` (a transformers model or a PeftModel); returns the PeftModel."""
    from peft import PeftModel

    path = Path(adapter_path)
    if not (path / "adapter_config.json").exists():
        raise MobenchError(f"{path} holds no saved LoRA adapter (adapter_config.json missing)")
    if isinstance(base, PeftModel):
        base.load_adapter(str(path), adapter_name=adapter_name)
        return base
    return PeftModel.from_pretrained(base, str(path), adapter_name=adapter_name, is_trainable=False)


def load_policy_with_adapters(policy: str, adapters: dict[str, str | Path], device: str | None = None, dtype: Any = None):
    """Load the task policy once (at ``dtype``; None: the device's default) and attach each named saved adapter:
    (PeftModel, tokenizer), eval mode."""
    from mobench.models import load_causal_lm

    if not adapters:
        raise MobenchError("no adapters to load")
    model, tok = load_causal_lm(policy, device=device, dtype=dtype)
    for name, path in adapters.items():
        model = load_adapter(model, path, adapter_name=name)
    model.to(model.device if device is None else device)
    model.eval()
    return model, tok


def truncate_prompts(pairs, tokenizer, max_length: int):
    """Cut each pair's prompt to its last tokens so that prompt + longer completion fit in ``max_length``."""
    # trl 1.16 only truncates the end of prompt+completion ("keep_start"), so an overlong prompt (a long
    # dialogue, a Reddit post) would swallow both completions. Keep the prompt's last tokens instead,
    # leaving room for the longer completion (the prompt keeps at least a quarter of max_length).
    out = []
    for p in pairs:
        ids = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in (p.chosen, p.rejected))
        room = max(max_length // 4, max_length - longest - 1)  # -1: the EOS trl appends
        prompt = p.prompt if len(ids) <= room else tokenizer.decode(ids[-room:])
        out.append(PreferencePair(prompt, p.chosen, p.rejected))
    return out


@contextmanager
def completion_positions_only():
    """While active, trl's fused LM head scores completion tokens only, on every device (a CPU speed-up)."""
    # trl 1.16's fused LM head scores every position (prompt and padding too) unless Triton runs the
    # kernel, to keep tile shapes static on Neuron; the masked positions are zeroed afterwards. On CPU
    # that is pure waste: scoring only completion tokens (trl's own CUDA path) made a SmolLM2 DPO step
    # 1.75x faster with the same loss. Patched only while training, only where trl has the switch.
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - another trl layout: train as trl does
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def checkpointing_kwarg(config_cls, enabled: bool = False) -> dict[str, bool]:
    """{name: enabled} for a trl config's activation-checkpointing switch under its current name.

    transformers 5 renamed gradient_checkpointing to activation_checkpointing and warns on the old name;
    trl 1.x turns it on by default, which at this model size only costs time.
    """
    fields = getattr(config_cls, "__dataclass_fields__", {})
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: bool(enabled)}


def silence_console(trainer):
    """Drop transformers' console printers (log dicts, tqdm): progress goes to context.progress instead."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


@contextmanager
def quiet_datasets():
    """Hide datasets' progress bars (trl's tokenising passes) inside the block."""
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            ds_logging.enable_progress_bar()


class PolicyPerPreference(Method):
    """Base class of a method that trains (or reuses) one LoRA policy per preference and decodes with it.

    Subclasses implement :meth:`train_policy`; ``generate`` calls it per preference, decodes the prompts
    with the policy plus that adapter (the task's generation settings) and remembers each folder in
    ``policies`` (preference key -> folder), which ``provenance`` adds to the base provenance.
    """

    #: What the progress line calls the policy's decoding ("MORLHF", "MODPO"); defaults to the method's name.
    label: str = ""

    def __init__(self, options: Any = None):
        super().__init__(options)
        self.policies: dict[str, str] = {}

    def train_policy(self, preference: Preference) -> Path:
        """The adapter folder of the policy for ``preference`` (trained through the artifact cache)."""
        raise NotImplementedError

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        """Per preference: its policy (trained once), then the prompts decoded with it."""
        from mobench.decoding import generate_with_adapter

        task, context = self.prepared()
        out = []
        for preference in preferences:
            with self.offline():  # training (or loading) the policy is offline cost, not decoding
                path = self.train_policy(preference)
            self.policies[preference.key] = str(path)
            description = f"{self.label or self.name} generating w=({preference.key})"
            out.append(generate_with_adapter(task.policy, path, prompts, task.generation, context, description))
        return out

    def provenance(self) -> dict[str, Any]:
        """The base provenance (method, options) plus each preference's policy folder."""
        return {**super().provenance(), "policies": dict(self.policies)}
