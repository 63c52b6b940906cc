"""Weight-space merges of LoRA experts: exact delta soups sum_i c_i B_i A_i with arbitrary real coefficients."""

from __future__ import annotations

from typing import Sequence

from mobench.api import MobenchError

MERGED_ADAPTER = "soup"

__all__ = ["merge_lora_adapters", "lora_deltas", "MERGED_ADAPTER"]


def merge_lora_adapters(model, adapters: Sequence[str], coefficients: Sequence[float], name: str = MERGED_ADAPTER) -> str:
    """Add adapter ``name`` whose delta is exactly sum_i c_i * scaling_i * B_i A_i, make it active, return its name.

    Uses peft's ``add_weighted_adapter(combination_type="cat")``: it stacks the A_i (each multiplied by
    c_i * scaling_i) and the B_i into one rank-sum adapter with scaling 1, so B A = sum_i c_i s_i B_i A_i
    with no approximation, and c_i may be negative (Bone-Soup's B^-1 mu) or not sum to 1. The "linear"
    type merges A and B separately (not exact) and the svd types truncate; both are avoided on purpose.
    """
    adapters, coefficients = list(adapters), [float(c) for c in coefficients]
    if len(adapters) != len(coefficients) or not adapters:
        raise MobenchError(f"need one coefficient per adapter, got {len(coefficients)} for {len(adapters)} adapters")
    from peft import LoraConfig

    for a in adapters:
        if a not in model.peft_config:
            raise MobenchError(f"adapter {a!r} is not loaded (loaded: {', '.join(model.peft_config)})")
        config = model.peft_config[a]
        if not isinstance(config, LoraConfig):
            raise MobenchError(f"adapter {a!r} is not LoRA ({type(config).__name__}); the exact delta merge supports plain LoRA only")
        if config.use_rslora or config.use_dora:
            # "cat" gives the merged adapter scaling alpha/r = 1; rsLoRA would make it 1/sqrt(r) and DoRA is not a plain delta.
            raise MobenchError(f"adapter {a!r} uses rsLoRA or DoRA; the exact delta merge supports plain LoRA only")
    if name in adapters:
        raise MobenchError(f"the merged adapter's name {name!r} clashes with an expert's")
    if name in model.peft_config:
        # add_weighted_adapter silently returns when the name exists; rebuild it for the new coefficients.
        if model.active_adapter == name:
            model.set_adapter(adapters[0])
        model.delete_adapter(name)
    model.add_weighted_adapter(adapters, coefficients, adapter_name=name, combination_type="cat")
    model.set_adapter(name)
    return name


def lora_deltas(model, adapter: str) -> dict[str, "object"]:
    """Each LoRA-wrapped module's weight delta scaling * B @ A for ``adapter`` (name -> tensor)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            out[module_name] = module.get_delta_weight(adapter)
    if not out:
        raise MobenchError(f"adapter {adapter!r} wraps no module")
    return out
