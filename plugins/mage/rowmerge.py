"""Per-row weight-space LoRA merges: row r runs W + sum_a c[r, a] s_a B_a A_a, exactly, in one batched forward.

Why by hand: peft merges one coefficient vector at a time (add_weighted_adapter) and its mixed-batch
inference picks one adapter per row, never a per-row mix. Since a merged delta acts linearly on each
layer's input, W x + sum_a c_a s_a B_a A_a x equals the merged layer's output, so activating all adapters
with a per-row scaling tensor [rows, 1, 1] reproduces, row by row, the model merged at that row's c.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from mobench.api import MobenchError


def lora_layers(model) -> list:
    """The peft LoRA layers of ``model``."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def row_merged(model, adapters: Sequence[str], coefficients) -> Iterator[None]:
    """Within the block, ``model`` computes row r with the LoRA merge sum_a coefficients[r, a] * delta_a.

    ``coefficients`` is a tensor [rows, len(adapters)] (any real values); no adapters means the plain base.
    """
    import torch

    adapters = list(adapters)
    layers = lora_layers(model)
    if adapters and coefficients.shape[-1] != len(adapters):
        raise MobenchError(f"{coefficients.shape[-1]} coefficients per row for {len(adapters)} adapters")
    saved = [(layer, list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters) for layer in layers]
    try:
        for layer in layers:
            present = [a for a in adapters if a in layer.lora_A]
            layer._active_adapter = present
            layer._disable_adapters = not present
            for a in present:
                i = adapters.index(a)
                column = coefficients[:, i].to(layer.lora_A[a].weight.dtype)
                layer.scaling[a] = layer.scaling[a] * column.view(-1, 1, 1)
        with torch.no_grad():
            yield
    finally:
        for layer, active, scaling, disabled in saved:
            layer._active_adapter = active
            layer.scaling.clear()
            layer.scaling.update(scaling)
            layer._disable_adapters = disabled
