"""The embedded code task: determinism, split disjointness, references pass and wrong bodies fail."""

import random

import pytest

from pfkit.tasks import codegen


@pytest.fixture(scope="module")
def small_splits():
    return codegen.splits(0, n_train=300, n_val=20, n_test=60)


def test_same_seed_same_problems_other_seed_differs():
    a, b, c = codegen.generate(40, seed=3), codegen.generate(40, seed=3), codegen.generate(40, seed=4)
    assert [(p.prompt, p.tests, p.reference) for p in a] == [(p.prompt, p.tests, p.reference) for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]


def test_problems_are_humaneval_shaped():
    for p in codegen.generate(30, seed=1):
        assert p.prompt.startswith(f"def {p.entry_point}(") and p.prompt.rstrip().endswith('"""')
        assert p.prompt.count(f">>> {p.entry_point}(") == 2
        assert p.tests.startswith("def check(candidate):\n") and p.tests.count("    assert candidate(") >= 4
        assert p.reference.startswith("    ") and p.reference.rstrip().endswith("return result")
        assert 1 <= p.meta["depth"] <= 3 and p.reference.count("result = ") == p.meta["depth"]


def test_splits_are_disjoint_by_function_and_text(small_splits):
    fps = {k: {p.meta["fingerprint"] for p in v} for k, v in small_splits.items()}
    assert {k: len(v) for k, v in fps.items()} == {"train": 300, "val": 20, "test": 60}  # distinct within
    assert not fps["train"] & fps["val"] and not fps["train"] & fps["test"] and not fps["val"] & fps["test"]
    bodies = {k: {p.reference for p in v} for k, v in small_splits.items()}
    assert not bodies["train"] & bodies["test"] and not bodies["train"] & bodies["val"]
    ids = [p.task_id for v in small_splits.values() for p in v]
    assert len(set(ids)) == len(ids)


def test_difficulty_is_spread_over_depths(small_splits):
    depths = [p.meta["depth"] for p in small_splits["test"]]
    assert {1, 2, 3} <= set(depths)
    assert min(depths.count(d) for d in (1, 2, 3)) >= 6
    fams = {p.meta["family"] for p in small_splits["test"]}
    assert fams == {"list", "str", "int"}


def test_reference_computes_the_documented_examples():
    # independent of the generator's own bookkeeping: run each docstring example through the reference
    for p in codegen.generate(25, seed=2):
        ns = {}
        exec(p.prompt + p.reference, ns)
        fn = ns[p.entry_point]
        lines = p.prompt.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith(">>>"):
                call, expected = line.strip()[4:], lines[i + 1].strip()
                assert repr(eval(call, ns)) == expected, (p.task_id, call)
        assert fn is not None


def test_wrong_completion_is_different_code_and_deterministic():
    probs = codegen.generate(20, seed=5)
    w1 = [codegen.wrong_completion(p, random.Random(i)) for i, p in enumerate(probs)]
    w2 = [codegen.wrong_completion(p, random.Random(i)) for i, p in enumerate(probs)]
    assert w1 == w2 and sum(w is not None for w in w1) >= 18
    assert all(w != p.reference for w, p in zip(w1, probs) if w is not None)


def test_bad_n_is_an_error():
    with pytest.raises(ValueError, match="n must be >= 0"):
        codegen.generate(-1)


def test_splits_are_built_once_and_each_call_gets_its_own_lists():
    a = codegen.splits(0, n_train=30, n_val=5, n_test=10)
    a["train"].clear()  # a caller reordering or trimming its lists must not change the next caller's
    b = codegen.splits(0, n_train=30, n_val=5, n_test=10)
    assert len(b["train"]) == 30 and b["test"][0] is a["test"][0]  # same frozen problems, new lists
    fresh = codegen._splits.__wrapped__(0, 30, 5, 10)  # uncached: the cache returns what generation returns
    assert [p.prompt for p in b["train"]] == [p.prompt for p in fresh["train"]]


def test_extra_split_is_disjoint_from_the_fixed_splits_and_reproducible():
    from pfkit.tasks import codegen

    extra = codegen.extra_split("study_eval", 300)
    fixed = {p.meta["fingerprint"] for ps in codegen.splits().values() for p in ps}
    fps = [p.meta["fingerprint"] for p in extra]
    assert len(extra) == 300 and len(set(fps)) == 300 and not set(fps) & fixed
    assert extra[7].task_id == "codegen/study_eval/7"
    assert [p.prompt for p in codegen.extra_split("study_eval", 300)] == [p.prompt for p in extra]
    assert codegen.extra_split("other", 5)[0].prompt != extra[0].prompt
    with pytest.raises(ValueError, match="fixed split"):
        codegen.extra_split("test", 5)
