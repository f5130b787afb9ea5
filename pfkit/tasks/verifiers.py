"""Verifiers for your own prompts, and the loader that maps a prompt file's columns onto pfkit's names.

A verifier turns one completion into a reward in [0, 1] against its record's reference answer:

- ``exact``    the extracted answer equals the reference after whitespace/case normalisation;
- ``numeric``  the extracted answer is a number within ``rel_tol``/``abs_tol`` of the reference;
- ``math``     ``math-verify`` (Hugging Face's checker: LaTeX/expressions, ``\\frac{1}{2}`` ≡ ``0.5``);
- ``code``     the completion runs against the record's unit tests in ``pfkit.sandbox``.

The answer is extracted from the completion as the last ``\\boxed{...}``, else the text after the last
"answer:" / "answer is", else (numeric) the last number, else the whole stripped completion; this is the
convention of the math-RL kits (verl's and TRL's reward functions read ``\\boxed`` first).

Reference answers are checked when the prompt set is loaded (:func:`check_answers`), so an answer the
verifier cannot read is one clear line naming the row, not a crash in the middle of training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pfkit.errors import UserError

VERIFIERS = ("exact", "numeric", "math", "code")
FIELDS = ("prompt", "answer", "image", "id", "tests", "entry_point")  # pfkit's names for record fields


class VerifierError(UserError, ValueError):
    """A prompt file or reference answer the verifier cannot use (message says which row and why).

    A ``UserError``, so ``pfkit fit`` prints it as one line (exit code 2); a ``ValueError`` for callers
    that caught the loader's errors as such before."""


_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[i:j]
            depth -= 1
    return None


def extract_answer(text: str) -> str:
    """The final answer of a completion (see the module docstring for the order of rules)."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    m = list(re.finditer(r"answer(?:\s+is)?\s*[:=]?\s*", text, flags=re.IGNORECASE))
    if m:
        rest = text[m[-1].end():].strip()
        return rest.splitlines()[0].strip().rstrip(".") if rest else ""
    return text.strip()


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators and a trailing % allowed); None if there is none."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _normalise(text: str) -> str:
    return " ".join(str(text).strip().strip("$").split()).lower().rstrip(".")


def exact_match(completion: str, answer) -> float:
    return float(_normalise(extract_answer(completion)) == _normalise(answer))


def numeric_match(completion: str, answer, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    ref = parse_number(answer)
    if ref is None:
        raise VerifierError(f"reference answer {answer!r} is not a number")
    got = parse_number(extract_answer(completion))
    return float(got is not None and math.isclose(got, ref, rel_tol=rel_tol, abs_tol=abs_tol))


# math-verify's own limit is 5 s of *wall-clock* time (signal.alarm) per parse/comparison: on a loaded machine
# a reference as plain as \frac{3}{2} timed out (its first call also imports sympy's LaTeX parser) and came
# back "unparsable", so a reward depended on the machine's load. A generous limit still stops pathological input.
MATH_TIMEOUT_S = 120


def _math_parse(text: str):
    from math_verify import parse

    text = str(text)
    # math-verify reads LaTeX inside $...$ / \boxed{}; wrap bare LaTeX so "\frac{1}{2}" parses too
    parsed = parse(text if ("$" in text or "\\boxed" in text) else f"${text}$", parsing_timeout=MATH_TIMEOUT_S)
    # math-verify falls back to the raw string when it cannot build an expression: that is "unparsed"
    return [x for x in parsed if not isinstance(x, str)]


def math_match(completion: str, answer) -> float:
    from math_verify import verify

    gold = _math_parse(answer)
    if not gold:
        raise VerifierError(f"reference answer {answer!r} cannot be parsed by math-verify")
    pred = _math_parse(extract_answer(completion))
    return float(bool(pred) and verify(gold, pred, timeout_seconds=MATH_TIMEOUT_S))


def code_match(completion: str, record: Mapping, timeout: float = 3.0) -> float:
    from pfkit.sandbox import Job, run

    prompt = str(record["prompt"])
    # prompt= : helpers the prompt defines run on the trusted side, so a completion cannot redefine them
    verdict = run([Job(prompt + completion, str(record["tests"]), record.get("entry_point"), prompt=prompt)],
                  timeout=timeout)[0]
    return float(verdict.passed)


def build_verifier(name: str, **options) -> Callable[[str, str, Mapping], float]:
    """``verifier(prompt, completion, record) -> reward in [0, 1]`` for a name in :data:`VERIFIERS`."""
    if name == "exact":
        return lambda prompt, completion, record: exact_match(completion, record["answer"])
    if name == "numeric":
        return lambda prompt, completion, record: numeric_match(completion, record["answer"], **options)
    if name == "math":
        return lambda prompt, completion, record: math_match(completion, record["answer"])
    if name == "code":
        return lambda prompt, completion, record: code_match(completion, record, **options)
    raise VerifierError(f"unknown verifier {name!r}; choose from {', '.join(VERIFIERS)} or give module:function")


def check_answers(records: Sequence[Mapping], verifier: str, source: str = "prompts") -> None:
    """Fail early, naming the row, on a reference the verifier cannot read (``_row``: the record's row in
    its file, set by the prompt datamodule, which shuffles; else its position in ``records``)."""
    need = {"exact": ("answer",), "numeric": ("answer",), "math": ("answer",), "code": ("tests",)}[verifier]
    for pos, rec in enumerate(records):
        i = rec.get("_row", pos)
        for key in need:
            if rec.get(key) is None or (isinstance(rec.get(key), float) and math.isnan(rec[key])):
                raise VerifierError(f"{source} row {i}: no `{key}` (the {verifier} verifier needs one)")
        if verifier == "numeric" and parse_number(rec["answer"]) is None:
            raise VerifierError(f"{source} row {i}: answer {rec['answer']!r} is not a number; use verifier: "
                                "exact or math for non-numeric answers")
        if verifier == "math" and not _math_parse(rec["answer"]):
            raise VerifierError(f"{source} row {i}: math-verify cannot parse answer {rec['answer']!r}")


# --------------------------------------------------------------------------------------- loading records
def _read_table(path: Path):
    import pandas as pd

    if path.is_dir():  # a `datasets` dataset saved with save_to_disk
        try:
            from datasets import DatasetDict, load_from_disk

            ds = load_from_disk(str(path))
        except Exception as e:  # datasets raises FileNotFoundError/ValueError variants for non-datasets folders
            raise VerifierError(f"{path} is a folder but not a `datasets` dataset saved with save_to_disk "
                                f"({type(e).__name__}); give a .jsonl/.parquet file or such a folder") from None
        if isinstance(ds, DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return ds.to_pandas()
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)  # "2" stays a string
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except ValueError as e:
        raise VerifierError(f"{path} could not be read as {suffix[1:]} ({str(e).splitlines()[0]})") from None
    raise VerifierError(f"{path}: unsupported prompt file type {suffix!r}; use .jsonl, .parquet or a "
                        "`datasets` save_to_disk folder")


def load_records(path: str | Path, columns: Mapping[str, str] | None = None,
                 check_images: bool = True) -> list[dict]:
    """Rows of a prompt file as dicts with pfkit's field names (:data:`FIELDS`).

    ``columns`` maps pfkit's names to the file's, e.g. ``{"prompt": "question", "answer": "solution",
    "image": "image_path"}``; unmapped fields keep their own names. Image paths are resolved relative to
    the file and checked to open (Pillow).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VerifierError(f"prompt file {path} not found")
    columns = dict(columns or {})
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise VerifierError(f"columns: unknown field(s) {sorted(unknown)}; map any of {', '.join(FIELDS)}")
    frame = _read_table(path)
    for field, col in columns.items():
        if col not in frame.columns:
            raise VerifierError(f"{path}: no column `{col}` for `{field}`; the file has "
                                f"{', '.join(map(str, frame.columns))} (set columns.{field})")
    frame = frame.rename(columns={col: field for field, col in columns.items()})
    if "prompt" not in frame.columns:
        raise VerifierError(f"{path}: no `prompt` column; the file has {', '.join(map(str, frame.columns))} "
                            "(map one with columns.prompt)")
    records = frame.to_dict("records")
    if "image" in frame.columns and check_images:
        from PIL import Image, UnidentifiedImageError

        base = path if path.is_dir() else path.parent
        for i, rec in enumerate(records):
            img = Path(str(rec["image"])).expanduser()
            img = img if img.is_absolute() else base / img
            try:
                with Image.open(img) as im:
                    im.verify()
            except (OSError, UnidentifiedImageError) as e:
                raise VerifierError(f"{path} row {i}: image {img} cannot be read ({type(e).__name__})") from None
            rec["image"] = str(img)
    return records
