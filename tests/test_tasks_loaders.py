"""HumanEval and MBPP loaders: every reference passes in the sandbox, an obviously wrong completion fails."""

import json

import pytest

from pfkit import sandbox
from pfkit.tasks import humaneval, mbpp


def _verdicts(problems, completions):
    return sandbox.check_completions(problems, completions, timeout=30.0)


def test_humaneval_has_164_problems_and_every_reference_passes():
    problems = humaneval.load()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert problems[0].entry_point == "has_close_elements" and "def check(candidate)" in problems[0].tests
    out = _verdicts(problems, [p.reference for p in problems])  # (MBPP/123 takes ~2 s alone)
    assert [p.task_id for p, v in zip(problems, out) if not v.passed] == []
    wrong = _verdicts(problems, ["    return None\n"] * len(problems))
    assert [p.task_id for p, v in zip(problems, wrong) if v.passed] == []


@pytest.mark.slow  # 427 programs, MBPP/123's reference alone takes ~2 s
def test_mbpp_sanitized_every_reference_passes(shared_data):
    problems = mbpp.load(shared_data / "mbpp" / "sanitized-mbpp.json")
    assert len(problems) == 427
    p = problems[0]
    assert p.task_id == "MBPP/2" and p.entry_point == "similar_elements"
    assert "Write a function to find the shared elements" in p.prompt and "assert set(similar_elements(" in p.prompt
    out = _verdicts(problems, [p.reference for p in problems])  # (MBPP/123 takes ~2 s alone)
    assert [p.task_id for p, v in zip(problems, out) if not v.passed] == []
    wrong = _verdicts(problems, [f"def {p.entry_point}(*args, **kwargs):\n    return None\n" for p in problems])
    assert [p.task_id for p, v in zip(problems, wrong) if v.passed] == []


def test_mbpp_original_jsonl_format_and_ids(tmp_path):
    rows = [{"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given char.",
             "code": "def remove_Occ(s,ch): \r\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]",
             "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
             "test_setup_code": "", "challenge_test_list": []},
            {"task_id": 56, "text": 'Check "quoted" """triple""" text with a \\d backslash.',
             "code": "def rev(n):\n    return int(str(n)[::-1])\ndef check(n):\n    return 2 * rev(n) == n + 1",
             "test_list": ["assert check(70) == False", "assert check(73) == True"], "test_setup_code": "import math"}]
    f = tmp_path / "mbpp.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = mbpp.load(f)
    assert [p.task_id for p in problems] == ["MBPP/11", "MBPP/56"]
    # a solution that defines its own `check` must not be shadowed by the test wrapper
    assert [p.entry_point for p in problems] == ["remove_Occ", "check"]
    assert problems[1].tests.startswith("import math")
    out = _verdicts(problems, [p.reference for p in problems])  # (MBPP/123 takes ~2 s alone)
    assert all(v.passed for v in out), out
    assert mbpp.normalize_task_id("Mbpp/11") == mbpp.normalize_task_id(11) == "MBPP/11"


def test_mbpp_missing_or_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        mbpp.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        mbpp.load(bad)
