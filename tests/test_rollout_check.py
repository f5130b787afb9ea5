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


# ------------------------------------------------------------- verification overlapped with generation


def test_overlap_gives_the_same_table_and_rollout(tiny):
    probs, tok, model = tiny
    out = {}
    for overlap in (False, True):
        g = torch.Generator().manual_seed(11)
        out[overlap] = sample_and_check(model, tok, probs[:5], 2, max_new_tokens=8, generator=g, batch_prompts=2,
                                        return_rollout=True, overlap=overlap)
    (t0, r0), (t1, r1) = out[False], out[True]
    assert len(t0) == 10
    # everything but the sandbox's run times (``seconds``), which no two runs share
    assert t0.drop(columns="seconds").equals(t1.drop(columns="seconds"))
    assert torch.equal(r0.sequences, r1.sequences) and torch.equal(r0.logprobs, r1.logprobs)


def test_overlap_checks_chunk_k_while_chunk_k_plus_1_is_sampled(tiny, monkeypatch):
    import threading

    import pfkit.rollout.check as check_mod

    probs, tok, model = tiny
    calls, second_started = [], threading.Event()
    real = check_mod.generate

    def counting_generate(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            second_started.set()
        return real(*a, **kw)

    monkeypatch.setattr(check_mod, "generate", counting_generate)
    seen = []

    def check(flat, texts):  # the first chunk's check waits for the next chunk's sampling to begin
        waited = second_started.wait(timeout=20) if not seen else True
        seen.append((threading.current_thread().name, waited, torch.is_grad_enabled()))
        return [0.5] * len(texts)

    t = sample_and_check(model, tok, probs[:4], 2, max_new_tokens=4, seed=0, batch_prompts=2, check=check,
                         overlap=True)
    assert seen[0][0].startswith("pfkit-verify") and seen[0][1], "chunk 0 was not verified during chunk 1's sampling"
    assert not any(grad for *_, grad in seen)  # no autograd in the verification thread either
    assert t["score"].tolist() == [0.5] * 8
    second_started.clear()
    calls.clear()
    seen.clear()
    sample_and_check(model, tok, probs[:4], 2, max_new_tokens=4, seed=0, batch_prompts=2, check=lambda f, x: [0] * len(x))
    assert len(calls) == 2


def test_overlap_propagates_a_failing_check(tiny):
    probs, tok, model = tiny

    def check(flat, texts):
        raise RuntimeError("sandbox down")

    with pytest.raises(RuntimeError, match="sandbox down"):
        sample_and_check(model, tok, probs[:4], 1, max_new_tokens=2, seed=0, batch_prompts=2, check=check,
                         overlap=True)


def test_grpo_step_rewards_and_advantages_equal_with_overlap_on_and_off():
    import copy

    from pfkit.data.prompts import verifier_prompt_set
    from pfkit.modules.grpo import GRPOModule
    from pfkit.rl import grpo

    prompts = [f"count {i}:" for i in range(8)]
    tok = train_tokenizer(prompts * 5 + ["0123456789 abcdef " * 5], vocab_size=300)
    torch.manual_seed(0)
    policy = build_policy(tok, n_layer=2, n_embd=32, n_head=2, n_positions=64)

    def reward(p, c):
        return sum(ch.isdigit() for ch in c[:8]) / 8

    res = {}
    for overlap in (False, True):
        m = GRPOModule(policy=None, sampler="uniform", prompts_per_step=4, group_size=4, max_new_tokens=8, lr=1e-2,
                       rollout_batch_prompts=2, overlap_verify=overlap, seed=3)
        m.set_policy(copy.deepcopy(policy), tok)
        m.attach(verifier_prompt_set(prompts, reward))
        opt = m.configure_optimizers()
        steps = [grpo.step(m.model, opt, m.sampler, m.rollout, m.config, generator=m.gen) for _ in range(2)]
        res[overlap] = (steps, [p.detach().clone() for p in m.model.parameters()])
    (s0, p0), (s1, p1) = res[False], res[True]
    for a, b in zip(s0, s1):
        assert a.batch.prompt_ids == b.batch.prompt_ids
        assert torch.equal(a.batch.rewards, b.batch.rewards) and torch.equal(a.advantages, b.advantages)
        assert a.stats["loss"] == b.stats["loss"]
    assert float(s0[0].batch.rewards.std()) > 0  # a step with something to learn from
    assert all(torch.equal(x, y) for x, y in zip(p0, p1))


def test_progress_bar_draws_only_on_a_terminal(tiny, monkeypatch, capsys):
    """``progress=`` draws a bar on a terminal and nothing into captured output (tests, CI logs, pipes)."""
    import io
    import sys

    probs, tok, model = tiny
    check = lambda flat, texts: [0.0] * len(texts)  # noqa: E731

    def run():
        sample_and_check(model, tok, probs[:2], 1, max_new_tokens=2, seed=0, batch_prompts=1, check=check,
                         progress="sampling")

    run()
    assert "sampling" not in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run()
    assert "sampling:" in term.getvalue() and "/2 " in term.getvalue()  # the bar over the 2 chunks
