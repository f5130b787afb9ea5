"""Every generated reference passes its hidden tests in pfkit.sandbox; wrong completions fail."""

import random

from pfkit.sandbox import check_completions
from pfkit.tasks import codegen


def test_all_references_pass_and_wrong_bodies_fail():
    s = codegen.splits(0, n_train=150, n_val=20, n_test=80)
    probs = s["train"] + s["val"] + s["test"]
    verdicts = check_completions(probs, [p.reference for p in probs])
    failed = [(p.task_id, v.status, v.detail) for p, v in zip(probs, verdicts) if not v.passed]
    assert not failed, failed[:5]

    rng = random.Random(0)
    wrong = [(p, codegen.wrong_completion(p, rng)) for p in probs[:60]]
    wrong = [(p, w) for p, w in wrong if w is not None]
    assert len(wrong) >= 55
    trivially_wrong = [(p, "    return None\n") for p in probs[:20]]
    cases = wrong + trivially_wrong
    verdicts = check_completions([p for p, _ in cases], [w for _, w in cases])
    assert all(v.status == "failed" for v in verdicts), [v.detail for v in verdicts if v.status != "failed"][:5]
