"""MBPP (Austin et al. 2021) from a local file: the sanitized JSON or the original JSONL.

MBPP problems are a sentence plus asserts, with no signature to complete, so the record is built as:

- ``prompt``: a module docstring holding the task text and the first test as the example (the standard
  MBPP prompt: "your code should pass this test"), e.g. ``r'''Write a function ...\\n>>> assert f(1) == 2\\n'''``;
- ``reference``: the dataset's full code. Appended to the prompt it is a valid module (docstring + code),
  so ``problem.program(reference)`` passes, as for HumanEval;
- ``tests``: the test imports/setup, every assert of ``test_list`` at top level (they call the function by
  its name, as in the dataset), then a ``check(candidate)`` that only asserts the entry point exists. The
  asserts are not inside ``check`` because some MBPP solutions define their own ``check`` function, which
  a wrapper of that name would shadow;
- ``entry_point``: the function the first test calls (the code's ``def`` that appears in it).

Task ids are ``MBPP/<n>``; :func:`normalize_task_id` also accepts ``<n>`` and ``Mbpp/<n>``
(EvalPlus spelling) in sample files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pfkit.tasks import CodeProblem


def normalize_task_id(task_id) -> str:
    """``2``, ``"2"``, ``"Mbpp/2"``, ``"MBPP/2"`` -> ``"MBPP/2"``."""
    text = str(task_id).strip()
    m = re.fullmatch(r"(?i:mbpp)/(\d+)|(\d+)", text)
    return f"MBPP/{m.group(1) or m.group(2)}" if m else text


def _entry_point(code: str, test: str) -> str:
    defs = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.M)
    for name in defs:
        if re.search(rf"\b{re.escape(name)}\s*\(", test):
            return name
    called = re.findall(r"\b([A-Za-z_]\w*)\s*\(", test)
    for name in called:
        if name in defs:
            return name
    classes = re.findall(r"^class\s+(\w+)", code, flags=re.M)
    return (defs or classes or ["solution"])[-1]


def _problem(task_id, text: str, code: str, tests: list[str], setup: str, source: str) -> CodeProblem:
    text = " ".join(text.split()).replace('"""', "'''")
    example = tests[0].replace('"""', "'''") if tests else ""
    prompt = f'r"""\n{text}\nYour code should pass this test:\n{example}\n"""\n'
    check = (setup.strip() + "\n\n" if setup.strip() else "") + "\n".join(tests) + (
        "\n\n\ndef check(candidate):\n    assert callable(candidate)\n")
    code = code.replace("\r\n", "\n")
    return CodeProblem(task_id=normalize_task_id(task_id), prompt=prompt, tests=check,
                       entry_point=_entry_point(code, tests[0] if tests else code), reference=code + "\n",
                       meta={"text": text, "test_list": list(tests), "source": source})


def load(path: str | Path) -> list[CodeProblem]:
    """Problems from ``sanitized-mbpp.json`` (a JSON list) or ``mbpp.jsonl`` (one object per line)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json")) + sorted(path.glob("*.jsonl"))
        if not found:
            raise FileNotFoundError(f"no MBPP .json/.jsonl file in {path}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"MBPP file not found: {path} (pass --data PATH to sanitized-mbpp.json or mbpp.jsonl)")
    raw = path.read_text()
    if raw.lstrip().startswith("["):
        rows = json.loads(raw)
    else:
        rows = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
    problems = []
    for row in rows:
        text = row.get("prompt", row.get("text", ""))
        tests = list(row["test_list"])
        setup = "\n".join(row.get("test_imports") or []) + "\n" + (row.get("test_setup_code") or "")
        problems.append(_problem(row["task_id"], text, row["code"], tests, setup, path.name))
    return problems
