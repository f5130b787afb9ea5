"""Bring your own prompts: one prompt-set datamodule for the code task and for a file with mapped columns,
verifiers chosen in config, the example dataset and config, and one-line errors from `pfkit fit`."""

import json
import operator
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pfkit.data.preference import CodePromptDataModule as PreferenceName
from pfkit.data.prompts import CodePromptDataModule, PromptDataModule
from pfkit.errors import UserError
from pfkit.tasks import codegen

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "examples" / "arithmetic.jsonl"
POLICY = ROOT / "data" / "examples" / "arith_policy"
needs_policy = pytest.mark.skipif(not (POLICY / "config.json").is_file(),
                                  reason="build it: python scripts/make_example_data.py")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------- the code task's ids


def test_codegen_prompt_ids_are_the_problems_chosen_before_the_file_source():
    """The VADE tracker is indexed by these sets: the code task must pick the same problems in the same
    order as before (a seeded shuffle of codegen.splits(0)["train"], first n_train)."""
    dm = PromptDataModule(task="codegen", n_train=7, n_val=3, seed=5)
    dm.setup("fit")
    train = list(codegen.splits(seed=0)["train"])
    random.Random(5).shuffle(train)
    assert dm.train_set.ids == [p.task_id for p in train[:7]]
    assert dm.val_set.ids == [p.task_id for p in codegen.splits(seed=0)["val"][:3]]
    assert dm.train_set.problems == train[:7] and dm.train_set.images is None


def test_pfppo_datamodule_is_the_prompt_datamodule_batched_by_problem():
    assert PreferenceName is CodePromptDataModule and issubclass(CodePromptDataModule, PromptDataModule)
    dm = CodePromptDataModule(seed=1, n_train=6, offset=10, n_val=2)
    dm.setup()
    sp = codegen.splits(1)
    assert dm.problems["train"] == sp["train"][10:16] and dm.problems["val"] == sp["val"][:2]
    assert dm.train_set.ids == [p.task_id for p in sp["train"][10:16]]
    assert dict(dm.hparams) == {"seed": 1, "n_train": 6, "offset": 10, "n_val": 2}  # merged with the module's


# ----------------------------------------------------------------------------------- a file of prompts


def test_file_columns_template_ids_and_held_out_rows(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4), "blue").save(tmp_path / "b.png")
    rows = [{"q": f"What is {i} + 1?", "sol": str(i + 1), "pic": "b.png", "extra": f"x{i}"} for i in range(10)]
    f = _write_jsonl(tmp_path / "own.jsonl", rows)
    cols = {"prompt": "q", "answer": "sol", "image": "pic"}
    dm = PromptDataModule(task="file", prompts_file=str(f), columns=cols, verifier="numeric", n_train=5, n_val=3,
                          seed=2, template="[{extra}] Q: {prompt}\nA:", stop=["\n"])
    dm.setup("fit")
    tr, va = dm.train_set, dm.val_set
    # no id column: ids are row numbers of the file, whatever the shuffle; the last n_val rows are held out
    assert va.ids == ["7", "8", "9"] and len(tr) == 5 and set(tr.ids) <= {str(i) for i in range(7)}
    picked = list(range(7))  # the first 7 rows, shuffled with Random(seed) like the code task
    random.Random(2).shuffle(picked)
    assert tr.ids == [str(i) for i in picked[:5]]
    i = tr.ids.index(str(picked[0]))
    assert tr.prompts[i] == f"[x{picked[0]}] Q: What is {picked[0]} + 1?\nA:"
    assert tr.images == [str(tmp_path / "b.png")] * 5 and tr.stop == ("\n",)
    # the reward is the verifier's on the record's own answer
    j = tr.ids.index(str(picked[1]))
    assert tr.score([i, i, j], [f" {picked[0] + 1}", " 0", f"answer: {picked[1] + 1}"]) == [1.0, 0.0, 1.0]
    # the same rows with an id column and a seed change: the same id keeps the same prompt
    f2 = _write_jsonl(tmp_path / "ids.jsonl", [{**r, "uid": f"u{k}"} for k, r in enumerate(rows)])
    a = PromptDataModule(task="file", prompts_file=str(f2), columns={**cols, "id": "uid"}, verifier="exact", n_val=0,
                         seed=0)
    b = PromptDataModule(task="file", prompts_file=str(f2), columns={**cols, "id": "uid"}, verifier="exact", n_val=0,
                         seed=9, n_train=4)
    a.setup(), b.setup()
    assert a.val_set is None and len(a.train_set) == 10
    assert {k: p for k, p in zip(b.train_set.ids, b.train_set.prompts)}.items() <= \
        {k: p for k, p in zip(a.train_set.ids, a.train_set.prompts)}.items()


def test_parquet_and_datasets_folder_give_the_same_prompt_set(tmp_path):
    from datasets import Dataset

    rows = [{"question": f"{i}/2 as a fraction?", "solution": f"\\frac{{{i}}}{{2}}", "uid": f"q{i}"} for i in range(1, 7)]
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    sets = []
    for src in (tmp_path / "p.parquet", tmp_path / "ds"):
        dm = PromptDataModule(task="file", prompts_file=str(src), verifier="math", n_val=2,
                              columns={"prompt": "question", "answer": "solution", "id": "uid"})
        dm.setup()
        sets.append(dm)
    assert sets[0].train_set.ids == sets[1].train_set.ids and sets[0].val_set.ids == ["q5", "q6"]
    ps = sets[1].val_set
    # math-verify: 0.5 is \frac{1}{2}... here q5 = 5/2: 2.5 and \frac{5}{2} match, 2 does not
    assert ps.score([0, 0, 0, 1], ["\\boxed{2.5}", "the answer is $\\frac{5}{2}$", "\\boxed{2}", "\\boxed{3}"]) == \
        [1.0, 1.0, 0.0, 1.0]


def test_verifiers_chosen_in_config_on_hand_made_cases(tmp_path):
    def ps(verifier, answer, **opts):
        f = _write_jsonl(tmp_path / f"{verifier}.jsonl", [{"prompt": "q?", "answer": answer}])
        dm = PromptDataModule(task="file", prompts_file=str(f), verifier=verifier, n_val=0, verifier_options=opts or None)
        dm.setup()
        return lambda texts: dm.train_set.score([0] * len(texts), texts)

    assert ps("math", "0.5")(["\\boxed{\\frac{1}{2}}", "$\\frac{1}{3}$", "answer: 1/2"]) == [1.0, 0.0, 1.0]
    assert ps("exact", "Blue")(["Answer: blue.", "  BLUE ", "light blue"]) == [1.0, 1.0, 0.0]
    assert ps("numeric", "3.14159", rel_tol=1e-3)(["3.1416", "3.15", "about 3"]) == [1.0, 0.0, 0.0]
    assert ps("numeric", "3.14159")(["3.1416"]) == [0.0]  # default tolerance 1e-6
    # a user function with options from config
    mod = tmp_path / "myverif.py"
    mod.write_text("def close(prompt, completion, record, slack=0):\n"
                   "    return float(abs(len(completion) - len(record['answer'])) <= slack)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert ps("myverif:close", "Blue", slack=1)(["Blu", "Bl", "Blues"]) == [1.0, 0.0, 1.0]
    finally:
        sys.path.remove(str(tmp_path))


def test_code_verifier_from_a_file_runs_the_sandbox_and_rewards_are_scores(tmp_path):
    f = _write_jsonl(tmp_path / "code.jsonl", [
        {"task": "t1", "src": "def add(a, b):\n", "check": "def check(f):\n    assert f(2, 3) == 5\n", "fn": "add"},
        {"task": "t2", "src": "def neg(a):\n", "check": "def check(f):\n    assert f(2) == -2\n", "fn": "neg"},
    ])
    dm = PromptDataModule(task="file", prompts_file=str(f), verifier="code", n_val=0,
                          columns={"prompt": "src", "tests": "check", "entry_point": "fn", "id": "task"})
    dm.setup()
    ps = dm.train_set
    i1, i2 = ps.ids.index("t1"), ps.ids.index("t2")
    assert ps.problems is not None and ps.stop  # code stops by default; rollouts' score = reward
    assert ps.score([i1, i1, i2], ["    return a + b\n", "    return a - b\n", "    return -a\n"]) == [1.0, 0.0, 1.0]


def test_errors_in_python_are_user_errors(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    with pytest.raises(UserError, match="prompt id 'x' appears twice"):
        PromptDataModule(task="file", prompts_file=str(f), verifier="exact", n_val=0).setup()
    with pytest.raises(UserError, match="needs a verifier"):
        PromptDataModule(task="file", prompts_file=str(f))
    with pytest.raises(UserError, match="task must be one of codegen, file"):
        PromptDataModule(task="csv")
    g = _write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    with pytest.raises(UserError, match=r"template .* cannot be filled from .* row \d \(KeyError"):
        PromptDataModule(task="file", prompts_file=str(g), verifier="exact", n_val=0, template="{question}").setup()
    with pytest.raises(UserError, match="g.jsonl row 1: no `answer`"):  # the file's row, though rows are shuffled
        PromptDataModule(task="file", prompts_file=str(g), verifier="exact", n_val=0, seed=3).setup()


# ------------------------------------------------------------------------------- the shipped example


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example_data", ROOT / "scripts" / "make_example_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_file_is_the_scripts_output_with_correct_answers():
    script = _load_script()
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
    assert rows == script.example_rows(200)  # regenerated by the script, nothing hand-edited
    ops = {"+": operator.add, "*": operator.mul}
    for r in rows:  # each answer recomputed from the question text
        a, op, b = re.fullmatch(r"What is (\d+) ([+*]) (\d+)\?", r["question"]).groups()
        assert int(r["solution"]) == ops[op](int(a), int(b))
    assert len({r["question"] for r in rows}) == 200 and {r["level"] for r in rows} == {1, 2, 3}


@needs_policy
def test_example_policy_success_spreads_over_the_prompts():
    """GRPO learns only from groups with mixed rewards: the shipped policy must be neither always right nor
    always wrong on the example prompts (eval.json is written by the script that trained it)."""
    ev = json.loads((POLICY / "eval.json").read_text())
    assert ev["samples"] == 8 and 0.1 <= ev["pass@1_T1"] <= 0.7 and ev["frac_zero"] < 0.7 and ev["frac_one"] < 0.5


def _fit(*args, timeout=900):  # generous: the CI machine may be shared
    from conftest import child_env_for

    return subprocess.run([sys.executable, "-m", "pfkit.cli", "fit", "-c", str(ROOT / "configs" / "grpo_own_data.yaml"),
                           *args], capture_output=True, text=True, timeout=timeout, env=child_env_for(), cwd=ROOT)


@pytest.mark.slow
@needs_policy
def test_own_data_config_trains_as_a_subprocess(tmp_path):
    from pfkit.runs import RunDir

    run = tmp_path / "run"
    r = _fit("--run_dir", str(run), "--trainer.max_steps", "2", "--model.init_args.prompts_per_step", "4",
             "--model.init_args.group_size", "4", "--data.init_args.n_val", "8", "--trainer.limit_val_batches", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    m = RunDir(run).metrics()
    assert m["train/reward_mean"].notna().sum() == 2 and m["train/rollouts_spent"].max() == 2 * 4 * 4
    ro = RunDir(run).read("rollouts")
    rows = {json.loads(line)["uid"]: json.loads(line) for line in EXAMPLE.read_text().splitlines()}
    assert len(ro) == 2 * 4 * 4 and set(ro["prompt_id"]) <= set(rows)
    held = set(list(rows)[-8:])
    assert not set(ro["prompt_id"]) & held  # the held-out rows are never rolled out in training
    # the logged reward is the numeric verifier on the logged response and the row's solution
    from pfkit.tasks.verifiers import numeric_match

    for _, x in ro.iterrows():
        assert x["prompt"] == f"Q: {rows[x['prompt_id']]['question']}\nA:"
        assert x["reward"] == numeric_match(x["response"], rows[x["prompt_id"]]["solution"], rel_tol=0.0, abs_tol=0.5)
    assert len(RunDir(run).read("difficulty")) == 2 * 160  # every training prompt, each step


@pytest.mark.slow
def test_bad_own_data_is_one_line_from_pfkit_fit(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    _write_jsonl(tmp_path / "img.jsonl", [{"question": "q", "solution": "1", "uid": "a", "img": "ok.png"},
                                         {"question": "q", "solution": "2", "uid": "b", "img": "broken.png"}])
    _write_jsonl(tmp_path / "ans.jsonl", [{"question": "q", "solution": "1", "uid": "a"},
                                         {"question": "q", "solution": "many", "uid": "b"}])
    # the shipped code policy: these runs stop at the data, before any rollout
    base = ["--run_dir", str(tmp_path / "run"), "--data.init_args.n_val", "0", "--model.init_args.policy", "embedded"]
    cases = [  # (extra arguments, what the one line must say)
        (["--data.init_args.columns", json.dumps({"prompt": "question", "answer": "answer_text"})],
         ["no column `answer_text` for `answer`; the file has uid, question, solution, level (set columns.answer)"]),
        (["--data.init_args.prompts_file", str(tmp_path / "img.jsonl"), "--data.init_args.columns",
          json.dumps({"prompt": "question", "answer": "solution", "id": "uid", "image": "img"})],
         ["row 1: image", "broken.png cannot be read"]),
        (["--data.init_args.prompts_file", str(tmp_path / "ans.jsonl")], ["row 1: answer 'many' is not a number"]),
        (["--data.init_args.prompts_file", str(tmp_path / "nope.jsonl")], ["nope.jsonl not found"]),
    ]
    for args, expect in cases:
        r = _fit(*base, *args, timeout=600)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2, (expect, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and err[-1].startswith("pfkit: error: "), err[-3:]
        assert all(e in err[-1] for e in expect), err[-1]
