"""The one sample-then-verify path (``pfkit.rollout.sample_and_check``) and the Rollout row operations the RL
loops use instead of pad/unpad/re-pad round trips (``select``, ``groups``, ``cat``, ``left_pad``)."""

from dataclasses import dataclass, field

import pytest
import torch

from pfkit import distributed as dist
from pfkit.models import build_policy, train_tokenizer
from pfkit.rollout import CODE_STOPS, Rollout, generate, left_pad, sample_and_check, sequence_logprobs
from pfkit.tasks import codegen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    probs = codegen.generate(6, seed=3)
    tok = train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=300)
    torch.manual_seed(0)
    return probs, tok, build_policy(tok, n_layer=1, n_embd=32, n_head=2, n_positions=512)


def test_left_pad_tensor_and_list():
    assert left_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], value=0).tolist() == [[1, 2, 3], [0, 0, 4]]
    assert left_pad(torch.tensor([[7, 8]]), 4, value=9).tolist() == [[9, 9, 7, 8]]
    assert left_pad([torch.tensor([5])], 3).tolist() == [[0, 0, 5]]


def test_select_trims_and_groups_keep_prompt_major_order(tiny):
    probs, tok, model = tiny
    ro = generate(model, tok, [probs[0].prompt, probs[1].prompt + "    # a longer prompt\n"], group_size=3,
                  max_new_tokens=6, seed=1)
    short = ro.select([0, 2])  # both answer the shorter prompt: the longer prompt's padding goes
    n_short = int(ro.attention_mask[0, :ro.prompt_len].sum())
    assert short.prompt_len == n_short and short.texts == [ro.texts[0], ro.texts[2]]
    assert short.response_len == max(1, int(ro.response_mask[[0, 2]].sum(-1).max()))
    full = sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_len)
    got = sequence_logprobs(model, short.sequences, short.attention_mask, short.response_len)
    T = short.response_len
    assert torch.allclose(got, full[[0, 2], :T], atol=1e-5)   # trimming changes no number
    groups = ro.groups(3)
    assert [g.texts for g in groups] == [ro.texts[:3], ro.texts[3:]]
    back = Rollout.cat(groups)
    assert back.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(back.response_mask.sum(-1), ro.response_mask.sum(-1))
    assert torch.allclose(back.logprobs.sum(-1), ro.logprobs.sum(-1))
    with pytest.raises(ValueError, match="groups of 4"):
        ro.groups(4)


def test_sample_and_check_table_matches_generate_and_the_sandbox(tiny):
    from pfkit.sandbox import check_completions

    probs, tok, model = tiny
    table, ro = sample_and_check(model, tok, probs[:4], 2, max_new_tokens=8, seed=5, batch_prompts=3,
                                 return_rollout=True)
    assert list(table.columns[:5]) == ["prompt_id", "sample_idx", "prompt", "response", "score"]
    assert {"status", "detail", "stdout", "stderr", "seconds"} <= set(table.columns)
    assert table["prompt_id"].tolist() == [p.task_id for p in probs[:4] for _ in range(2)]
    assert table["sample_idx"].tolist() == [0, 1] * 4
    # chunk 2 (problem 3) is seeded seed + 3, as documented
    again = generate(model, tok, [probs[3].prompt], group_size=2, max_new_tokens=8, seed=5 + 3, stop=CODE_STOPS)
    assert table["response"].tolist()[6:] == again.texts and ro.texts == table["response"].tolist()
    old_name = generate(model, tok, [probs[3].prompt], n=2, max_new_tokens=8, seed=5 + 3, stop=CODE_STOPS)
    assert old_name.texts == again.texts  # ``n``, group_size's old name, still works
    verdicts = check_completions([p for p in probs[:4] for _ in range(2)], table["response"].tolist())
    assert table["score"].tolist() == [float(v.passed) for v in verdicts]
    assert table["status"].tolist() == [v.status for v in verdicts]
    # the reference solutions pass: a score of 1 is reachable through the same checker
    ok = sample_and_check(model, tok, probs[:1], 1, max_new_tokens=1, check=lambda ps, cs: check_completions(
        ps, [p.reference for p in ps]))
    assert ok["score"].tolist() == [1.0] and ok["status"].tolist() == ["passed"]


@dataclass
class FlaggedVerdict:
    """A verdict with fields pfkit.sandbox's Verdict may gain later (they must flow into the table)."""

    status: str
    detail: str = ""
    hack_flag: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def test_extra_verdict_fields_and_plain_rewards_pass_through(tiny):
    probs, tok, model = tiny

    def check(ps, cs):
        return [FlaggedVerdict("passed" if i % 2 else "failed", f"d{i}", hack_flag=i == 1, meta={"tests": i})
                for i in range(len(cs))]

    t = sample_and_check(model, tok, probs[:1], 3, max_new_tokens=4, check=check)
    assert t["score"].tolist() == [0.0, 1.0, 0.0] and t["hack_flag"].tolist() == [False, True, False]
    assert t["detail"].tolist() == ["d0", "d1", "d2"] and t["meta.tests"].tolist() == [0, 1, 2]
    rewards = sample_and_check(model, tok, [7, 9], 2, prompts=["a b", "c"], max_new_tokens=3,
                               check=lambda ids, cs: [0.25 * (i == 9) for i in ids])
    assert rewards["prompt_id"].tolist() == [7, 7, 9, 9] and rewards["score"].tolist() == [0, 0, 0.25, 0.25]
    assert list(rewards.columns) == ["prompt_id", "sample_idx", "prompt", "response", "score"]


def test_zero_loss_is_zero_and_reaches_every_trainable_parameter():
    lin, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1).requires_grad_(False)
    loss = dist.zero_loss(lin, frozen)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in lin.parameters())
    assert dist.rank_seed(5) == 5 and not dist.seed_rank_stream(torch.Generator(), 5)  # rank 0: unchanged
