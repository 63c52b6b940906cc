"""Per-row weight-space LoRA merges: row r runs W + sum_a c[r, a] s_a B_a A_a, exactly, in one batched forward.

Why by hand: peft merges one coefficient vector at a time (add_weighted_adapter) and its mixed-batch
inference picks one adapter per row, never a per-row mix. Since a merged delta acts linearly on each
layer's input, W x + sum_a c_a s_a B_a A_a x equals the merged layer's output, so activating all adapters
with a per-row scaling tensor [rows, 1, 1] reproduces, row by row, the model merged at that row's c.

When every row has the same c (the preference-major chunks of a grid), :class:`MergedWeights` folds the
merge into a copy of each wrapped layer's weight once (W + sum_a c_a delta_a, peft's own delta), and
:func:`row_merged` given it swaps those weights in for the block with the adapters off: one plain matmul a
layer instead of the base's plus two small ones per adapter, equal to the per-row path up to float rounding.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from mobench.api import MobenchError


def lora_layers(model) -> list:
    """The peft LoRA layers of ``model``."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def uniform_rows(coefficients) -> bool:
    """Whether every row of ``coefficients`` [rows, adapters] is the same vector."""
    return coefficients is not None and coefficients.shape[0] > 0 and bool((coefficients == coefficients[:1]).all())


class MergedWeights:
    """One scorer's merged weights W + sum_a c_a delta_a for the last coefficient vector c it was asked for.

    ``weights(model, adapters, c)`` rebuilds them when c (or the adapter list) changes, so a chunk of rows
    with one preference builds them once; the memory is one copy of every wrapped layer's weight.
    """

    def __init__(self):
        self.key = None
        self.merged: dict = {}
        self._rows = None  # the coefficients tensor for_rows last decided on, and its answer
        self._folded = None

    def for_rows(self, model, adapters: Sequence[str], coefficients) -> dict | None:
        """The folded weights when every row of ``coefficients`` is the same, else None.

        Decided once per coefficients tensor (the decoder sets a new one per chunk), so a decoding step pays no
        device sync for the check.
        """
        if coefficients is not self._rows or self.key is not None and self.key[0] != tuple(adapters):
            self._rows = coefficients
            self._folded = self.weights(model, adapters, coefficients[0]) if uniform_rows(coefficients) else None
        return self._folded

    def weights(self, model, adapters: Sequence[str], c) -> dict:
        """{LoRA layer: merged weight} for coefficients ``c`` [len(adapters)] (built on a change of c)."""
        import torch

        key = (tuple(adapters), tuple(float(x) for x in c.tolist()))
        if key != self.key:
            self.merged, self.key = {}, None  # free the old copy before building the new one
            with torch.no_grad():
                for layer in lora_layers(model):
                    present = [a for a in adapters if a in layer.lora_A]
                    if not present:
                        continue
                    weight = layer.get_base_layer().weight
                    delta = sum(float(c[adapters.index(a)]) * layer.get_delta_weight(a).to(weight.dtype) for a in present)
                    self.merged[layer] = weight.detach() + delta
            self.key = key
        return self.merged


@contextmanager
def row_merged(model, adapters: Sequence[str], coefficients, merged: MergedWeights | None = None) -> Iterator[None]:
    """Within the block, ``model`` computes row r with the LoRA merge sum_a coefficients[r, a] * delta_a.

    ``coefficients`` is a tensor [rows, len(adapters)] (any real values); no adapters means the plain base.
    With ``merged`` and every row's coefficients the same, the merge is folded into the weights (built once per
    coefficient vector by ``merged``) and the adapters are off; otherwise each row scales each adapter.
    """
    import torch

    adapters = list(adapters)
    layers = lora_layers(model)
    if adapters and coefficients.shape[-1] != len(adapters):
        raise MobenchError(f"{coefficients.shape[-1]} coefficients per row for {len(adapters)} adapters")
    folded = merged.for_rows(model, adapters, coefficients) if merged is not None and adapters else None
    saved = [(layer, list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters) for layer in layers]
    swapped = []  # (weight parameter, its own tensor) to put back
    try:
        for layer in layers:
            present = [a for a in adapters if a in layer.lora_A]
            if folded is not None:
                layer._disable_adapters = True
                if layer in folded:
                    weight = layer.get_base_layer().weight
                    swapped.append((weight, weight.data))
                    weight.data = folded[layer]
                continue
            layer._active_adapter = present
            layer._disable_adapters = not present
            for a in present:
                i = adapters.index(a)
                column = coefficients[:, i].to(layer.lora_A[a].weight.dtype)
                layer.scaling[a] = layer.scaling[a] * column.view(-1, 1, 1)
        with torch.no_grad():
            yield
    finally:
        for weight, own in swapped:
            weight.data = own
        for layer, active, scaling, disabled in saved:
            layer._active_adapter = active
            layer.scaling.clear()
            layer.scaling.update(scaling)
            layer._disable_adapters = disabled
