"""Sampling, scoring and sample-then-verify for the RL loop (stable API: ``generate``, ``sequence_logprobs``,
``Rollout``).

* :mod:`pfkit.rollout.core`: :func:`generate` (batched sampling with a KV cache -> :class:`Rollout`),
  :func:`sequence_logprobs` / :func:`shared_prefix_logprobs` (teacher-forced log-probs), :func:`left_pad`;
* :mod:`pfkit.rollout.runners`: the GPT-2 fast decode loop and the generic Hugging Face runner;
* :mod:`pfkit.rollout.stops`: stop strings (:data:`CODE_STOPS`, :func:`find_stop`);
* :mod:`pfkit.rollout.check`: :func:`sample_and_check` (sample ``group_size`` responses per problem, run the tests,
  one table).
"""

from pfkit.rollout.check import sample_and_check, verdict_columns
from pfkit.rollout.core import (
    Rollout,
    _sample,  # noqa: F401 -- the per-step sampler, unit-tested in tests/test_rollout.py
    generate,
    left_pad,
    sequence_logprobs,
    shared_prefix_logprobs,
    top_p_filter,
)
from pfkit.rollout.stops import CODE_STOPS, DEDENT, find_stop

__all__ = [
    "CODE_STOPS",
    "DEDENT",
    "Rollout",
    "find_stop",
    "generate",
    "left_pad",
    "sample_and_check",
    "sequence_logprobs",
    "shared_prefix_logprobs",
    "top_p_filter",
    "verdict_columns",
]
