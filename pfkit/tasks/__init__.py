"""Code problems with unit tests: the embedded generator, HumanEval and MBPP share one record type."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CodeProblem:
    """One function-synthesis problem in HumanEval's shape.

    ``prompt`` is what the policy sees (imports + signature + docstring); a completion is appended to it
    to form the program. ``tests`` defines ``check(candidate)`` with asserts; the verifier runs
    ``prompt + completion``, then ``tests``, then ``check(entry_point)``. ``reference`` is a completion
    (the body text that follows ``prompt``) known to pass.
    """

    task_id: str
    prompt: str
    tests: str
    entry_point: str
    reference: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def program(self, completion: str) -> str:
        """The full program text for a completion of this prompt."""
        return self.prompt + completion
