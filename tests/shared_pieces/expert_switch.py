"""A third-party method and task built from mobench's shared pieces, in one file, with public names only.

`expert-switch` decodes each grid point with the DPO expert of the objective that has the largest weight
(the experts are mobench's shared, cached ones: `mobench.training.ExpertsMethod`). `micro-pairs` is a task
on a randomly initialised micro model (its folder in MOBENCH_MICRO_POLICY) with a few preference pairs and
two registered objectives, so the whole path trains and decodes in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mobench import hookimpl
from mobench.api import Normalisation, PreferencePair, TaskInstance
from mobench.options import Options, budget, option
from mobench.toolkit import chat_prompts
from mobench.training import DpoBudget, ExpertsMethod


@dataclass(frozen=True)
class SwitchOptions(Options):
    """expert-switch's options: the experts' DPO budget and how ties between weights break."""

    experts: DpoBudget = budget(DpoBudget, "the per-objective DPO experts")
    prefer_last: bool = option(False, "on a tie, take the last objective instead of the first")

    PRESETS = {"tiny": {"experts.steps": 2, "experts.batch_size": 2, "experts.max_length": 64, "experts.lora_r": 4,
                        "experts.n_pairs": 4, "experts.learning_rate": 1e-3}}


class ExpertSwitch(ExpertsMethod):
    """Decode with the expert of the largest weight (a deliberately simple, non-interpolating baseline)."""

    Options = SwitchOptions

    def generate(self, prompts, preferences):
        from mobench.decoding import generate_for_task

        task, context = self.prepared()
        self.check_preferences(preferences)
        names = list(self.experts)
        self.chosen = getattr(self, "chosen", {})
        out = []
        for p in preferences:
            order = range(len(names))
            best = max(order, key=lambda i: (p[i], i if self.options.prefer_last else -i))
            self.chosen[p.key] = names[best]
            self.model.set_adapter(names[best])
            out.append(generate_for_task(self.model, self.tokenizer, prompts, task.generation, context, f"switch {names[best]}"))
        return out


    def provenance(self):
        return {**super().provenance(), "chosen": dict(getattr(self, "chosen", {}))}


def load_micro(scale, context):
    policy = os.environ["MOBENCH_MICRO_POLICY"]
    chats = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(3)]
    pair_chats = [[{"role": "user", "content": f"Describe thing {i}."}] for i in range(4)]
    pair_prompts = chat_prompts(policy, pair_chats)
    pairs = {
        "brevity": [PreferencePair(p, "Short.", "A much longer and wordier answer.") for p in pair_prompts],
        "sentiment": [PreferencePair(p, "Great, lovely, wonderful!", "Awful and sad.") for p in pair_prompts],
    }
    return TaskInstance(
        name="micro-pairs", scale=scale, policy=policy,
        objectives=[context.objective("brevity", scale), context.objective("sentiment", scale)],
        prompts=chat_prompts(policy, chats), chats=chats, pairs=pairs,
        validation_prompts=chat_prompts(policy, [[{"role": "user", "content": f"Tell me about item {i}."}] for i in (7, 8)]),
        normalisation={"brevity": Normalisation(4.0, 2.0), "sentiment": Normalisation(0.0, 0.5)},
        reference_point=(-1.0, -1.0), grid_points=3,
        generation={"max_new_tokens": 4, "batch_size": 3},
    )


@hookimpl
def register_tasks(register):
    register.task("micro-pairs", load_micro, objectives=("brevity", "sentiment"), description="a micro-model task with pairs")


@hookimpl
def register_methods(register):
    register.method("expert-switch", ExpertSwitch, "decode with the expert of the largest weight")
