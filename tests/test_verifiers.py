"""Own-data prompts: the column mapping, each verifier on hand-made cases, and one-line errors."""

import json

import pandas as pd
import pytest

from pfkit.tasks.verifiers import (
    VerifierError,
    build_verifier,
    check_answers,
    exact_match,
    extract_answer,
    load_records,
    math_match,
    numeric_match,
)


@pytest.mark.parametrize("text,answer", [
    ("so the result is \\boxed{\\frac{3}{4}} done", "\\frac{3}{4}"),
    ("nested \\boxed{\\sqrt{\\frac{1}{2}}}", "\\sqrt{\\frac{1}{2}}"),
    ("Reasoning...\nThe answer is 42.", "42"),
    ("Answer: blue", "blue"),
    ("  7 ", "7"),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_exact_and_numeric():
    assert exact_match("Answer: Blue.", "blue") == 1.0 and exact_match("Answer: red", "blue") == 0.0
    assert numeric_match("the answer is 1,250", "1250") == 1.0
    assert numeric_match("\\boxed{0.3333333}", "0.33333333", rel_tol=1e-6) == 1.0
    assert numeric_match("\\boxed{0.34}", "1/3") == 0.0  # "1/3" parses as its last number 3: not 0.34
    assert numeric_match("no number here", "5") == 0.0
    with pytest.raises(VerifierError, match="not a number"):
        numeric_match("5", "five")


@pytest.mark.parametrize("completion,answer,ok", [
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("the answer is $\\frac{1}{2}$", "0.5", 1.0),
    ("\\boxed{2x+2}", "2(x+1)", 1.0),
    ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
])
def test_math_verify_equivalences(completion, answer, ok):
    assert math_match(completion, answer) == ok


def test_code_verifier_runs_the_sandbox():
    v = build_verifier("code")
    rec = {"prompt": "def add(a, b):\n", "tests": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    assert v(rec["prompt"], "    return a + b\n", rec) == 1.0
    assert v(rec["prompt"], "    return a - b\n", rec) == 0.0


def test_column_mapping_jsonl_parquet_and_datasets_folder(tmp_path):
    rows = [{"question": "1+1?", "solution": "2", "uid": "a"}, {"question": "2+2?", "solution": "4", "uid": "b"}]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    pq = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    cols = {"prompt": "question", "answer": "solution", "id": "uid"}
    for src in (jl, pq, tmp_path / "ds"):
        recs = load_records(src, cols)
        assert [(r["prompt"], r["answer"], r["id"]) for r in recs] == [("1+1?", "2", "a"), ("2+2?", "4", "b")]
    check_answers(load_records(jl, cols), "numeric")


def test_clear_errors(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"question": "q", "solution": "two"}) + "\n")
    with pytest.raises(VerifierError, match=r"no column `sol` for `answer`; the file has question, solution"):
        load_records(jl, {"prompt": "question", "answer": "sol"})
    with pytest.raises(VerifierError, match="no `prompt` column"):
        load_records(jl)
    recs = load_records(jl, {"prompt": "question", "answer": "solution"})
    with pytest.raises(VerifierError, match="row 0: answer 'two' is not a number"):
        check_answers(recs, "numeric")
    with pytest.raises(VerifierError, match="cannot parse"):
        check_answers([{"answer": "\\frac{"}], "math")
    img = tmp_path / "i.jsonl"
    img.write_text(json.dumps({"prompt": "what?", "img": "missing.png"}) + "\n")
    with pytest.raises(VerifierError, match="row 0: image .*missing.png cannot be read"):
        load_records(img, {"image": "img"})
    (tmp_path / "x.csv").write_text("prompt\nq\n")
    with pytest.raises(VerifierError, match="unsupported prompt file type '.csv'"):
        load_records(tmp_path / "x.csv")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(VerifierError, match="could not be read as jsonl"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(VerifierError, match="not a `datasets` dataset"):
        load_records(tmp_path / "folder")
    with pytest.raises(VerifierError, match="unknown verifier"):
        build_verifier("fuzzy")


def test_image_paths_resolve_relative_to_the_file(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "a.png")
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "colour?", "image": "imgs/a.png", "answer": "red"}) + "\n")
    rec = load_records(f)[0]
    assert rec["image"] == str(tmp_path / "imgs" / "a.png")
