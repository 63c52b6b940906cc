"""A complete third-party mobench method: steer the task's policy by stating the preference in words."""

from mobench import hookimpl


class PromptedSteering:
    """Prefix each prompt with the user's objective weights; generate with the task's own policy."""

    name = "prompted"
    batch_preferences = False

    def prepare(self, task, context):
        from mobench.models import load_causal_lm

        self.task = task
        self.model, self.tokenizer = load_causal_lm(task.policy, device=context.device)

    def generate(self, prompts, preferences):
        import torch

        settings = self.task.generation
        out = []
        for preference in preferences:
            wish = ", ".join(f"{w:.0%} {name}" for name, w in zip(self.task.objective_names, preference))
            texts = [f"(Balance your answer: {wish}.)\n{prompt}" for prompt in prompts]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
            with torch.no_grad():
                ids = self.model.generate(
                    **batch, max_new_tokens=settings.get("max_new_tokens", 32), do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = ids[:, batch["input_ids"].shape[1]:]
            out.append(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    def provenance(self):
        return {"policy": self.task.policy, "steering": "preference stated in the prompt"}


@hookimpl
def register_methods(register):
    register.method("prompted", PromptedSteering, "the preference stated in the prompt (a baseline)")
