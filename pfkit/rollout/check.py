"""Sample-then-verify: ``group_size`` responses per problem from a policy, each checked, as one table.

The one place pfkit samples responses and runs them against unit tests (SFT validation, reward-model data,
PF-PPO, GRPO, the demos): a thin function over :func:`pfkit.rollout.generate` and
:func:`pfkit.sandbox.check_completions`. Every field of the sandbox's ``Verdict`` becomes a column
(read generically from the dataclass, so fields added to ``Verdict`` later flow into ``rollouts.parquet``
without a change here); a dict field such as ``meta`` becomes one ``meta.<key>`` column per key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import torch

from pfkit.rollout.core import Rollout, generate
from pfkit.rollout.stops import CODE_STOPS

__all__ = ["sample_and_check", "verdict_columns"]


def verdict_columns(verdict: Any) -> dict[str, Any]:
    """A verdict (any dataclass) as flat columns; a plain number (a verifier's reward) as ``score`` only."""
    if not dataclasses.is_dataclass(verdict):
        return {"score": float(verdict)}
    row: dict[str, Any] = {"score": float(verdict.passed)}
    for f in dataclasses.fields(verdict):
        value = getattr(verdict, f.name)
        if isinstance(value, dict):
            row.update({f"{f.name}.{k}": v for k, v in value.items()})
        else:
            row[f.name] = value
    return row


def _no_grad(fn, *args):
    """``fn(*args)`` without autograd: grad mode is per thread, and a checker (a reward model) run in the
    verification thread must not build graphs any more than it would in the caller's ``no_grad``."""
    with torch.no_grad():
        return fn(*args)


@torch.no_grad()
def sample_and_check(policy, tokenizer, problems: Sequence, group_size: int, *, max_new_tokens: int = 96,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int | None = 0,
                     generator: torch.Generator | None = None, batch_prompts: int | None = None,
                     stop: Sequence = CODE_STOPS, timeout: float = 3.0,
                     check: Callable[[list, list[str]], Sequence] | None = None, prompts: Sequence[str] | None = None,
                     progress: str | None = None, return_rollout: bool = False, overlap: bool = False,
                     sample: Callable[..., Rollout] | None = None):
    """``group_size`` sampled responses per problem (rows problem-major), each checked.

    Returns a ``DataFrame`` with columns ``prompt_id, sample_idx, prompt, response, score`` (1.0 = the tests
    passed) and the verdict's fields (``status, detail, ...``); with ``return_rollout`` also the
    :class:`~pfkit.rollout.Rollout` (token ids, masks, log-probs) the table's rows came from.

    ``problems``: ``CodeProblem``-like records (``.prompt``, ``.task_id``) or, with ``prompts`` given, any ids.
    ``check(flat_problems, texts)``: verdicts or plain rewards in [0, 1]; default
    ``pfkit.sandbox.check_completions(..., timeout=timeout)``. Sampling runs in chunks of ``batch_prompts``
    problems (all at once when None), chunk ``i`` (starting at problem ``s``) seeded ``seed + s`` unless a
    ``generator`` is given; ``progress`` names a tqdm bar (drawn only on a terminal).

    ``overlap``: check chunk ``i`` in a background thread while chunk ``i + 1`` is sampled. The sandbox runs
    the programs in its own processes, so both cores work at once; the verdicts are collected in chunk order
    and verification draws nothing from the sampling generator, so the table and rollout are identical
    with ``overlap`` on or off (tested). A ``check`` that is pure Python holds the GIL and gains nothing.

    ``sample(texts, start, **kw)``: the engine that samples one chunk (prompts ``texts``, the first at index
    ``start``; ``kw`` = group_size, max_new_tokens, temperature, top_p, stop, generator, seed) and returns a
    :class:`~pfkit.rollout.Rollout` (or subclass); default :func:`pfkit.rollout.generate` on ``policy``.
    The vLLM engine and the VLM path use it, so every engine shares this loop.
    """
    problems = list(problems)
    texts = list(prompts) if prompts is not None else [p.prompt for p in problems]
    if check is None:
        from pfkit.sandbox import check_completions

        def check(flat, completions):
            return check_completions(flat, completions, timeout=timeout)

    if sample is None:
        def sample(chunk_texts, start, **kw):
            return generate(policy, tokenizer, chunk_texts, **kw)

    step = batch_prompts or max(1, len(problems))
    starts = range(0, len(problems), step)
    if progress:
        # as the study bar: plain tqdm with disable=None draws only when stderr is a terminal (not in captured
        # output, tests or CI logs); tqdm.auto would draw anyway and warn in a notebook without ipywidgets
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", disable=None, leave=False)
    rows, rollouts, pending = [], [], []
    n_chunks = -(-len(problems) // step)
    pool = ThreadPoolExecutor(1, thread_name_prefix="pfkit-verify") if overlap and n_chunks > 1 else None
    try:
        for s in starts:
            chunk = problems[s:s + step]
            ro = sample(texts[s:s + step], s, group_size=group_size, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, stop=stop, generator=generator,
                        seed=None if (seed is None or generator is not None) else seed + s)
            flat = [p for p in chunk for _ in range(group_size)]
            verdicts = pool.submit(_no_grad, check, flat, ro.texts) if pool is not None else check(flat, ro.texts)
            pending.append((s, flat, ro, verdicts))
            if return_rollout:
                rollouts.append(ro)
        for s, flat, ro, verdicts in pending:  # chunk order, whatever order the checks finished in
            verdicts = verdicts.result() if pool is not None else verdicts
            for j, (p, text, v) in enumerate(zip(flat, ro.texts, verdicts)):
                rows.append({"prompt_id": getattr(p, "task_id", p), "sample_idx": j % group_size,
                             "prompt": texts[s + j // group_size],
                             "response": text, **verdict_columns(v)})
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    table = pd.DataFrame(rows)
    if not return_rollout:
        return table
    return table, (rollouts[0] if len(rollouts) == 1 else type(rollouts[0]).cat(rollouts))
