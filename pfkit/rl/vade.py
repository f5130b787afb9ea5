"""VADE: variance-aware dynamic sampling with per-prompt Beta posteriors (Hu et al., arXiv 2511.18902).

The algorithm box, as the authors' method figure and project-page caption give it (VADE-RL.github.io
@93bb18b, ``asset/main_framework.png`` and ``index.html``; the paper's method section and its equation
numbers were not retrievable, see ../shared/research/vade.md §0, §2). Per training step, with G rollouts
per prompt and B prompts per step:

1. **Posterior draw.** Every training prompt ``i`` has pseudo-counts ``(a_i, b_i)``, starting at 0. Draw
   ``p~_i ~ Beta(a_i + 1, b_i + 1)`` (one Thompson draw per prompt; the "+1" is a uniform prior that the
   decay never touches).
2. **Information gain.** ``I_i = p~_i (1 - p~_i)^2``: asymmetric, maximal at ``p~ = 1/3`` (``I = 4/27``), so
   it favours somewhat-hard prompts over equally uncertain easy ones.
3. **Batch.** The top-B distinct prompts by ``I`` are rolled out (no uniform mixing, no post-rollout filter).
4. **Two-scale prior decay, exclusive.** Selected prompts ("fast adaptation"), with ``r_i`` the group's
   summed reward: ``a_i <- l1 a_i + r_i``, ``b_i <- l1 b_i + (G - r_i)``. Unselected prompts ("gradual
   decay"): ``a_i <- l2 a_i``, ``b_i <- l2 b_i``. The figure's worked example implies ``l1 = 0.2`` and
   ``l2 = 0.999``: (0.1, 8.4) with 1/8 correct -> (1.02, 8.68); (2.7, 5.3) with 4/8 -> (4.54, 5.06);
   unselected (9.0, 0.2) -> (8.991, 0.1998). Whether the experiments used these values is not retrievable.

Here the state is stored as ``alpha = alpha0 + a``, ``beta = beta0 + b`` with ``alpha0 = beta0 = 1``, so
``Beta(alpha, beta)`` *is* the figure's ``Beta(a + 1, b + 1)``; ``counts()`` returns ``(a, b)``. Mapping:
``local_decay = l1`` (applied on each visit, ``local_clock="visits"``), ``global_decay = l2`` applied by
``step()`` only to prompts not updated since the previous step (``decay_scope="unselected"``).

**Continuous rewards** are not covered by the paper (the figure shows binary counts). They enter in the
fractional form ``r_i = sum_j r_ij`` for rewards in [0, 1] (a reward of 0.7 is 0.7 of a success), which
equals the figure's count for binary rewards. Named alternatives: ``"bernoulli"`` (draw a Bernoulli(r)
outcome per reward; Agrawal & Goyal's trick) and ``"threshold"`` (success iff r >= 0.5). Rewards outside
[0, 1] raise (they are never clamped).

**Variants** (``variant=``; any explicit keyword overrides the variant's value):

* ``paper``: the box above (default).
* ``p1p``: score ``p~ (1 - p~)`` instead; the paper's Table 2 ablation "p(1-p)" (-1.09 AVG points).
* ``greedy``: rank by the posterior mean, no Thompson draw; Table 2's "greedy" (-1.50). *Our reading of
  the name; the paper's definition is not retrievable.*
* ``last_update``: ``l1 = 0``, the posterior holds only the newest group; Table 2's "last update"
  (-1.65). *Our reading of the name, likewise.*
* ``kit``: pfkit's form before the paper's rules were known: score ``p~ (1 - p~)``, visit decay 0.8, and a
  per-step decay of 0.99 applied to *every* prompt (selected ones too, after their update).

Other options kept from the kit: ``criterion="nonzero"`` (``1 - p~^G - (1 - p~)^G``, the chance a group of
G binary rewards is mixed; symmetric like ``p(1-p)`` and ranks the same), ``local_clock="steps"`` (the
visit decay is ``local_decay ** steps since last seen``), ``decay_scope="all"``.

Pure torch, no Lightning: the whole state (alpha, beta, last-seen step, visit count, the step's updated
mask, step counter and the tracker's RNG) is a ``state_dict()`` that the GRPO module stores in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.distributions import Beta

CONTINUOUS = ("fractional", "bernoulli", "threshold")
CRITERIA = ("infogain", "variance", "nonzero")
DRAWS = ("thompson", "mean")
CLOCKS = ("visits", "steps")
SCOPES = ("unselected", "all")

_PAPER = dict(criterion="infogain", draw="thompson", local_decay=0.2, global_decay=0.999, decay_scope="unselected")
VARIANTS: dict[str, dict] = {
    "paper": _PAPER,
    "p1p": {**_PAPER, "criterion": "variance"},
    "greedy": {**_PAPER, "draw": "mean"},
    "last_update": {**_PAPER, "local_decay": 0.0},
    "kit": dict(criterion="variance", draw="thompson", local_decay=0.8, global_decay=0.99, decay_scope="all"),
}


def info_gain(p: torch.Tensor, criterion: str = "infogain", group_size: int = 8) -> torch.Tensor:
    """The selection score of success probabilities ``p`` under ``criterion`` (see the module docstring)."""
    if criterion == "infogain":
        return p * (1 - p).pow(2)
    if criterion == "variance":
        return p * (1 - p)
    if criterion == "nonzero":
        return 1 - p.pow(group_size) - (1 - p).pow(group_size)
    raise ValueError(f"criterion={criterion!r} is not one of {CRITERIA}")


def _as_ids(prompt_ids, n: int) -> torch.Tensor:
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(f"prompt ids must be in [0, {n}); got min {int(ids.min())}, max {int(ids.max())}")
    return ids


class BetaTracker:
    """Per-prompt Beta posteriors over success probability, with Thompson selection and prior decay.

    Prompts are integer ids ``0..num_prompts-1`` (the caller maps task ids to indices). Keywords left at
    ``None`` take the ``variant``'s value (``VARIANTS``).
    """

    def __init__(self, num_prompts: int, *, variant: str = "paper", alpha0: float = 1.0, beta0: float = 1.0,
                 global_decay: float | None = None, local_decay: float | None = None,
                 local_clock: str = "visits", decay_scope: str | None = None, continuous: str = "fractional",
                 criterion: str | None = None, draw: str | None = None, seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {tuple(VARIANTS)}")
        v = VARIANTS[variant]
        global_decay = v["global_decay"] if global_decay is None else global_decay
        local_decay = v["local_decay"] if local_decay is None else local_decay
        decay_scope = v["decay_scope"] if decay_scope is None else decay_scope
        criterion = v["criterion"] if criterion is None else criterion
        draw = v["draw"] if draw is None else draw
        if num_prompts <= 0:
            raise ValueError(f"num_prompts must be positive, got {num_prompts}")
        if alpha0 <= 0 or beta0 <= 0:
            raise ValueError(f"prior alpha0, beta0 must be > 0, got {alpha0}, {beta0}")
        if not 0.0 < global_decay <= 1.0:
            raise ValueError(f"global_decay must be in (0, 1] (1 = no decay), got {global_decay}")
        if not 0.0 <= local_decay <= 1.0:
            raise ValueError(f"local_decay must be in [0, 1] (1 = no decay, 0 = newest group only), got {local_decay}")
        for name, val, allowed in (("local_clock", local_clock, CLOCKS), ("continuous", continuous, CONTINUOUS),
                                   ("criterion", criterion, CRITERIA), ("draw", draw, DRAWS),
                                   ("decay_scope", decay_scope, SCOPES)):
            if val not in allowed:
                raise ValueError(f"{name}={val!r} is not one of {allowed}")
        self.num_prompts = int(num_prompts)
        self.variant = variant
        self.alpha0, self.beta0 = float(alpha0), float(beta0)
        self.global_decay, self.local_decay = float(global_decay), float(local_decay)
        self.local_clock, self.decay_scope, self.continuous = local_clock, decay_scope, continuous
        self.criterion, self.draw = criterion, draw
        self.alpha = torch.full((num_prompts,), self.alpha0, dtype=torch.float64)
        self.beta = torch.full((num_prompts,), self.beta0, dtype=torch.float64)
        self.last_seen = torch.full((num_prompts,), -1, dtype=torch.long)  # -1 = never observed
        self.visits = torch.zeros(num_prompts, dtype=torch.long)
        self.updated = torch.zeros(num_prompts, dtype=torch.bool)  # observed since the last step()
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(seed)
        # the p~ each prompt was ranked on in the latest selection (NaN: not a candidate); logging only
        self.last_draw = torch.full((num_prompts,), float("nan"), dtype=torch.float64)

    # ------------------------------------------------------------ estimates
    @property
    def p_mean(self) -> torch.Tensor:
        return self.alpha / (self.alpha + self.beta)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's pseudo-counts ``(a, b)``: the posterior is ``Beta(a + alpha0, b + beta0)``."""
        return self.alpha - self.alpha0, self.beta - self.beta0

    def _shrink(self, ids: torch.Tensor, factor: torch.Tensor | float) -> None:
        """evidence <- factor * evidence for the given prompts (toward the prior, never past it)."""
        self.alpha[ids] = self.alpha0 + factor * (self.alpha[ids] - self.alpha0)
        self.beta[ids] = self.beta0 + factor * (self.beta[ids] - self.beta0)

    # --------------------------------------------------------------- update
    def update(self, prompt_ids: Sequence[int] | torch.Tensor, rewards, group_size: int,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Add one group of ``group_size`` rewards per prompt (rewards ordered group by group).

        The prompt's old evidence is multiplied by ``local_decay`` first (the fast rule), then the new
        evidence is added. Returns the per-prompt ``successes`` and ``trials`` that were added (for
        logging). A prompt listed twice gets both groups, in order.
        """
        ids = _as_ids(prompt_ids, self.num_prompts)
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        if r.numel() != ids.numel() * group_size:
            raise ValueError(f"expected {ids.numel()} prompts x group_size {group_size} = "
                             f"{ids.numel() * group_size} rewards, got {r.numel()}")
        if torch.isnan(r).any():
            raise ValueError("rewards contain NaN; score every completion (0 for unscorable) before update")
        if ((r < 0) | (r > 1)).any():
            raise ValueError("rewards must lie in [0, 1] for the Beta update; rescale them first "
                             f"(got min {float(r.min()):.3g}, max {float(r.max()):.3g})")
        r = r.view(ids.numel(), group_size)
        if self.continuous == "bernoulli":
            r = torch.bernoulli(r, generator=generator or self.generator)
        elif self.continuous == "threshold":
            r = (r >= 0.5).to(torch.float64)
        succ = r.sum(dim=1)
        trials = torch.full_like(succ, float(group_size))
        for j, i in enumerate(ids.tolist()):  # sequential: duplicates and decay order matter
            seen = int(self.last_seen[i])
            if self.local_clock == "visits":  # a never-seen prompt has no evidence, so this is exact
                self._shrink(torch.tensor([i]), self.local_decay)
            elif seen >= 0:
                self._shrink(torch.tensor([i]), self.local_decay ** max(self.step_count - seen, 0))
            self.alpha[i] += succ[j]
            self.beta[i] += trials[j] - succ[j]
            self.last_seen[i] = self.step_count
            self.visits[i] += 1
            self.updated[i] = True
        return {"prompt_ids": ids, "successes": succ, "trials": trials}

    def step(self) -> None:
        """End of a training step: the slow decay (``global_decay``), then advance the step clock.

        ``decay_scope="unselected"`` (paper): only prompts not updated since the previous ``step()``;
        ``"all"`` (kit): every prompt, the ones just updated included.
        """
        if self.global_decay < 1.0:
            ids = torch.arange(self.num_prompts)
            if self.decay_scope == "unselected":
                ids = ids[~self.updated]
            self._shrink(ids, self.global_decay)
        self.updated.zero_()
        self.step_count += 1

    # ------------------------------------------------------------- selection
    def sample_p(self, generator: torch.Generator | None = None, *, ids: torch.Tensor | None = None,
                 draw: str | None = None) -> torch.Tensor:
        """One Thompson draw ``p~ ~ Beta(alpha, beta)`` per prompt (or the posterior mean, ``draw="mean"``)."""
        ids = torch.arange(self.num_prompts) if ids is None else ids
        a, b = self.alpha[ids], self.beta[ids]
        if (draw or self.draw) == "mean":
            return a / (a + b)
        # torch.distributions.Beta draws via the global RNG; fork it so the draw comes from the tracker's
        # own (checkpointed) generator instead and the caller's global state is untouched.
        g = generator or self.generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            return Beta(a, b).sample()

    def _record(self, ids: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        self.last_draw[ids] = p.to(torch.float64)
        return p

    def scores(self, generator: torch.Generator | None = None, *, ids: torch.Tensor | None = None,
               group_size: int = 8) -> torch.Tensor:
        """The information-gain score of each prompt (one Thompson draw each, or the posterior mean)."""
        ids = torch.arange(self.num_prompts) if ids is None else ids
        return info_gain(self._record(ids, self.sample_p(generator, ids=ids)), self.criterion, group_size)

    def select(self, k: int, generator: torch.Generator | None = None, *,
               candidates: Sequence[int] | torch.Tensor | None = None, group_size: int = 8) -> torch.Tensor:
        """Thompson-sample the ``k`` prompts with the largest information-gain score (distinct ids).

        ``generator`` defaults to the tracker's own RNG, which is part of ``state_dict()``: a tracker
        restored from a checkpoint makes the same next selection as the one that was saved.
        """
        ids = torch.arange(self.num_prompts) if candidates is None else _as_ids(candidates, self.num_prompts)
        if not 0 < k <= ids.numel():
            raise ValueError(f"cannot select k={k} prompts from {ids.numel()} candidates; "
                             f"use 0 < k <= number of training prompts")
        s = self.scores(generator, ids=ids, group_size=group_size)
        return ids[torch.topk(s, k).indices]

    # ------------------------------------------------------------------ state
    def config(self) -> dict:
        return {"num_prompts": self.num_prompts, "variant": self.variant, "alpha0": self.alpha0,
                "beta0": self.beta0, "global_decay": self.global_decay, "local_decay": self.local_decay,
                "local_clock": self.local_clock, "decay_scope": self.decay_scope, "continuous": self.continuous,
                "criterion": self.criterion, "draw": self.draw}

    def state_dict(self) -> dict:
        return {
            "alpha": self.alpha.clone(), "beta": self.beta.clone(), "last_seen": self.last_seen.clone(),
            "visits": self.visits.clone(), "updated": self.updated.clone(), "step_count": self.step_count,
            "rng_state": self.generator.get_state(), "config": self.config(),
        }

    def load_state_dict(self, state: dict) -> None:
        n = int(state["alpha"].numel())
        if n != self.num_prompts:
            raise ValueError(f"checkpoint tracks {n} prompts but this tracker has {self.num_prompts}; "
                             "resume with the same training prompt set")
        self.alpha = state["alpha"].clone().to(torch.float64)
        self.beta = state["beta"].clone().to(torch.float64)
        self.last_seen = state["last_seen"].clone()
        self.visits = state["visits"].clone()
        self.updated = state["updated"].clone() if "updated" in state else torch.zeros(n, dtype=torch.bool)
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["rng_state"])
        cfg = state.get("config", {})
        if "config" in state and "decay_scope" not in cfg:  # a checkpoint from before the paper's form
            cfg = {**cfg, "decay_scope": "all"}
        for key, value in cfg.items():
            if key != "num_prompts":
                setattr(self, key, value)

    @classmethod
    def from_state_dict(cls, state: dict) -> BetaTracker:
        cfg = dict(state["config"])
        cfg.setdefault("decay_scope", "all")
        tracker = cls(cfg.pop("num_prompts"), **cfg)
        tracker.load_state_dict(state)
        return tracker
