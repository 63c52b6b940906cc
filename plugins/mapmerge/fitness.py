"""Cheap per-objective fitness of the policy's active adapter: DPO implicit-reward margins, or scored generations.

Both count their calls (``calls``): a call evaluates one merged configuration on every objective.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mobench.api import MobenchError, PreferencePair, TaskInstance
from mobench.training import DpoBudget, truncate_prompts


def held_out_pairs(task: TaskInstance, experts: DpoBudget, n: int) -> dict[str, list[PreferencePair]]:
    """Per objective, ``n`` pairs after the first ``experts.n_pairs`` (the ones its expert trained on)."""
    out = {}
    for name in task.objective_names:
        pairs = list(task.pairs.get(name, []))[int(experts.n_pairs): int(experts.n_pairs) + int(n)]
        if not pairs:
            raise MobenchError(f"objective {name!r} has no preference pairs beyond the {experts.n_pairs} its expert "
                               f"trained on ({len(task.pairs.get(name, []))} in all): the margin fitness needs held-out pairs "
                               "(lower experts.n_pairs, or use -o fitness=scored)")
        out[name] = pairs
    return out


class MarginFitness:
    """Per objective k: mean over k's held-out pairs of beta [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)].

    Teacher-forced (prompt, completion, EOS, as trl's DPO scores them; prompts cut to their end like the
    experts' training data). The pairs are tokenised once and the reference log-probs (the policy with its
    adapters disabled, which is the experts' DPO reference) computed once, so a call is one forward pass
    of the merged policy over 2 x pairs sequences.
    """

    def __init__(self, model, tokenizer, pairs: dict[str, list[PreferencePair]], beta: float, max_length: int,
                 batch_size: int = 8):
        self.model, self.beta, self.batch_size = model, float(beta), int(batch_size)
        self.objectives = list(pairs)
        self.calls = 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows, owner = [], []  # owner: (objective index, +1 chosen / -1 rejected) of each sequence
        for k, name in enumerate(self.objectives):
            for pair in truncate_prompts(pairs[name], tokenizer, int(max_length)):
                prompt = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
                for sign, completion in ((1, pair.chosen), (-1, pair.rejected)):
                    ids = (prompt + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
                    rows.append((ids[: int(max_length)], len(prompt)))
                    owner.append((k, sign))
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))  # similar lengths share a batch: less padding
        rows, owner = [rows[r] for r in order], [owner[r] for r in order]
        self.batches = [self._batch(rows[s: s + self.batch_size], pad) for s in range(0, len(rows), self.batch_size)]
        self.owner = np.array(owner)
        self.n_pairs = np.array([len(pairs[name]) for name in self.objectives], dtype=float)
        with model.disable_adapter():
            self.reference = self._logps()

    @staticmethod
    def _batch(rows: Sequence[tuple[list[int], int]], pad: int):
        """Right-padded ids and attention, the first position whose logits matter, and the completion mask from there."""
        import torch

        width = max(len(ids) for ids, _ in rows)
        start = max(0, min(n_prompt for _, n_prompt in rows) - 1)  # logits before the earliest completion are not needed
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        completion = torch.zeros((len(rows), width - 1 - start))
        for r, (row, n_prompt) in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            attention[r, : len(row)] = 1
            completion[r, n_prompt - 1 - start: len(row) - 1 - start] = 1.0  # position t predicts token t + 1
        return ids, attention, start, completion

    def _logps(self) -> np.ndarray:
        import torch

        out = []
        device = self.model.device
        with torch.no_grad():
            for ids, attention, start, completion in self.batches:
                ids = ids.to(device)
                # logits_to_keep: the LM head runs only from the batch's first completion position on
                logits = self.model(input_ids=ids, attention_mask=attention.to(device),
                                    logits_to_keep=ids.shape[1] - start).logits[:, :-1].float()
                token = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, start + 1:, None]).squeeze(-1)
                out.append((token * completion.to(device)).sum(-1).cpu())
        return torch.cat(out).double().numpy()

    def __call__(self) -> np.ndarray:
        """The active adapter's mean implicit-reward margin per objective (objective order)."""
        self.calls += 1
        signed = self.beta * (self._logps() - self.reference) * self.owner[:, 1]
        return np.array([signed[self.owner[:, 0] == k].sum() for k in range(len(self.objectives))]) / self.n_pairs


class ScoredFitness:
    """Per objective: the z-scored mean (the task's normalisation and direction, as the runner scores a grid
    point) of greedy generations for the fitness prompts (:func:`fitness_prompts`), scored by the task's objectives.

    The default fitness of ``map`` and ``merge-lite``: it measures what the leaderboard measures, on prompts the
    evaluation never uses. Measured on hh (tiny experts, 8 held-out pairs each) the cheaper margin fitness did
    not: it gave the helpful expert a higher harmless margin (0.233) than the harmless expert (0.214), so the
    compiled front sat at coefficients near (1, 0.5-1) and every preference decoded nearly the same soup.
    """

    def __init__(self, model, tokenizer, task: TaskInstance, prompts: Sequence[str], max_new_tokens: int,
                 batch_size: int, seed: int):
        missing = [o.name for o in task.objectives if o.name not in task.normalisation]
        if missing:
            raise MobenchError(f"the scored fitness needs the task's normalisation (missing for {', '.join(missing)})")
        self.model, self.tokenizer, self.task, self.prompts = model, tokenizer, task, list(prompts)
        self.max_new_tokens, self.batch_size, self.seed = int(max_new_tokens), int(batch_size), int(seed)
        self.calls = 0

    def __call__(self) -> np.ndarray:
        """The active adapter's z-scored mean score per objective (objective order)."""
        from mobench.decoding import generate_responses

        self.calls += 1
        responses = generate_responses(self.model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                                       batch_size=self.batch_size, seed=self.seed)
        out = []
        for objective in self.task.objectives:
            scores = [float(v) for v in objective.score(self.prompts, responses)]
            out.append(self.task.normalisation[objective.name].apply(float(np.mean(scores)), objective.direction))
        return np.array(out)


def fitness_prompts(task: TaskInstance, experts: DpoBudget, n: int) -> list[str]:
    """Up to ``n`` prompts for the scored fitness: the task's validation prompts first (templated like the
    evaluation prompts and disjoint from them), then prompts of the held-out pairs; never an evaluation prompt."""
    out = list(dict.fromkeys(task.validation_prompts))[:n]
    if len(out) < n:
        evaluation = set(task.prompts)
        try:
            extra = held_out_prompts(task, experts, n + len(out))
        except MobenchError:
            extra = []
        out += [p for p in extra if p not in out and p not in evaluation][: n - len(out)]
    if not out:
        raise MobenchError("no prompts for the scored fitness: the task has no validation prompts and no pairs beyond "
                           f"the experts' {experts.n_pairs}")
    return out


def held_out_prompts(task: TaskInstance, experts: DpoBudget, n: int) -> list[str]:
    """Up to ``n`` distinct prompts of the objectives' held-out pairs, taken in turn from each objective."""
    pools = [[p.prompt for p in task.pairs.get(name, [])[int(experts.n_pairs):]] for name in task.objective_names]
    out: list[str] = []
    for row in zip(*[pool + [None] * (max(map(len, pools)) - len(pool)) for pool in pools]):
        for prompt in row:
            if prompt is not None and prompt not in out and len(out) < n:
                out.append(prompt)
    if not out:
        raise MobenchError(f"no held-out pair prompts beyond the experts' {experts.n_pairs} for the scored fitness")
    return out
