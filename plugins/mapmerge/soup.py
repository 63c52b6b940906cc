"""An exact LoRA soup with separate coefficients per component group (attention or MLP, by layer band).

The soup adapter is mobench's exact ``cat`` merge (:func:`mobench.merging.merge_lora_adapters`): per module,
``A = [c_1 s_1 A_1; ...; c_m s_m A_m]`` and ``B = [B_1 ... B_m]``, so ``B A = sum_i c_i s_i B_i A_i``. It is
built once; a new configuration rewrites each module's stacked ``A`` blocks with its group's coefficients,
in peft's own operation order (``A_i * c * s_i``), so a configuration with every group at ``w`` is the plain
soup at ``w`` bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mobench.api import MobenchError
from mobench.merging import MERGED_ADAPTER, merge_lora_adapters

_LAYER = re.compile(r"\.layers?\.(\d+)\.")
ALL = "all"


def component_group(module_name: str, n_layers: int, bands: int) -> str:
    """``attn.<band>`` or ``mlp.<band>`` (``other.<band>`` for neither) of a module; ``all`` when ``bands`` is 0."""
    if bands == 0:
        return ALL
    found = _LAYER.search(module_name)
    band = min(bands - 1, int(found.group(1)) * bands // max(1, n_layers)) if found else 0
    lowered = module_name.lower()
    kind = "attn" if "attn" in lowered or "attention" in lowered else "mlp" if "mlp" in lowered or "feed_forward" in lowered else "other"
    return f"{kind}.{band}"


@dataclass
class _Module:
    group: int
    soup_a: object  # the soup adapter's stacked A weight (a torch Parameter)
    blocks: list[tuple[int, int, object, float]]  # (row start, row end, expert A weight, expert scaling)


class GroupedSoup:
    """The soup adapter on ``model`` over ``adapters`` (objective order), with coefficients per component group.

    ``bands`` 0 puts every module in one group (MAP's soup coefficients); ``bands`` B >= 1 splits the
    layers into B contiguous bands and each band's attention and MLP modules into their own groups.
    ``groups`` names the groups (sorted); :meth:`apply` takes a (groups, adapters) coefficient matrix.
    """

    def __init__(self, model, adapters: Sequence[str], bands: int = 0):
        from peft.tuners.lora import LoraLayer

        self.model, self.adapters, self.bands = model, list(adapters), int(bands)
        merge_lora_adapters(model, self.adapters, [1.0] * len(self.adapters))
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        found: list[tuple[str, object]] = []
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and MERGED_ADAPTER in module.lora_A:
                found.append((component_group(name, n_layers, self.bands), module))
        if not found:
            raise MobenchError("the experts' soup wraps no module")
        self.groups = sorted({g for g, _ in found})
        self.module_groups = {g: 0 for g in self.groups}
        self.modules: list[_Module] = []
        for group, module in found:
            self.module_groups[group] += 1
            start, blocks = 0, []
            for adapter in self.adapters:
                if adapter in module.lora_A:
                    weight = module.lora_A[adapter].weight
                    blocks.append((start, start + weight.shape[0], weight, module.scaling[adapter]))
                    start += weight.shape[0]
                else:  # peft's cat skips an adapter that does not wrap this module
                    blocks.append((start, start, None, 0.0))
            self.modules.append(_Module(self.groups.index(group), module.lora_A[MERGED_ADAPTER].weight, blocks))

    @property
    def shape(self) -> tuple[int, int]:
        """(groups, adapters): the shape of a coefficient matrix."""
        return len(self.groups), len(self.adapters)

    def apply(self, coefficients: np.ndarray) -> None:
        """Make the soup ``sum_i C[g, i] s_i B_i A_i`` in each module of group g, and activate it."""
        import torch

        C = np.asarray(coefficients, dtype=float).reshape(self.shape)
        with torch.no_grad():
            for module in self.modules:
                for i, (start, end, weight, scaling) in enumerate(module.blocks):
                    if weight is not None:
                        module.soup_a.data[start:end] = weight.data * float(C[module.group, i]) * scaling
        self.model.set_adapter(MERGED_ADAPTER)
