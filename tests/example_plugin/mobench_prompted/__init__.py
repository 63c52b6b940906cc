"""A complete third-party mobench method: steer the task's policy by stating the preference in words."""

from dataclasses import dataclass

from mobench import hookimpl
from mobench.api import Method
from mobench.options import Options, option


@dataclass(frozen=True)
class PromptedOptions(Options):
    """Options of `prompted` (`mobench options prompted` lists them; `-o KEY=VALUE` sets them)."""

    instruction: str = option("(Balance your answer: {wish}.)", "text put before each prompt; {wish} is the preference in words")
    max_new_tokens: int = option(32, "tokens generated per response")

    PRESETS = {"paper": {"max_new_tokens": 128}}  # values that differ from the defaults at a scale


class PromptedSteering(Method):
    """Prefix each prompt with the user's objective weights; generate with the task's own policy."""

    Options = PromptedOptions

    def prepare(self, task, context):
        from mobench.models import load_causal_lm

        super().prepare(task, context)  # keeps self.task and self.context
        self.model, self.tokenizer = load_causal_lm(task.policy, device=context.device)

    def generate(self, prompts, preferences):
        import torch

        task, _ = self.prepared()
        out = []
        for preference in preferences:
            wish = ", ".join(f"{w:.0%} {name}" for name, w in zip(task.objective_names, preference))
            texts = [self.options.instruction.format(wish=wish) + "\n" + prompt for prompt in prompts]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
            with torch.no_grad():
                ids = self.model.generate(
                    **batch, max_new_tokens=self.options.max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = ids[:, batch["input_ids"].shape[1]:]
            out.append(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    def provenance(self):
        return {"policy": self.task.policy, "steering": "preference stated in the prompt", "options": self.options.to_dict()}


@hookimpl
def register_methods(register):
    register.method("prompted", PromptedSteering, "the preference stated in the prompt (a baseline)")
