"""The vLLM rollout engine (pfkit.rollout.vllm) and the truncated importance-sampling correction.

The correction's formula and its use in ``pfkit.rl.grpo.update`` run everywhere (no vLLM needed). The engine
tests are ``@pytest.mark.vllm``: they need vLLM, which pins its own torch/transformers, so they run in the
separate venv (``make vllm`` then ``make test-vllm``: ``.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py``)
and are skipped with the reason where vllm does not import.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfkit.rl import grpo
from pfkit.rl.grpo import truncated_is_weights
from pfkit.rollout import CODE_STOPS, DEDENT, Rollout, find_stop
from pfkit.rollout.vllm import _chunks, available, vllm_stop_strings

ROOT = Path(__file__).resolve().parents[1]
needs_vllm = pytest.mark.skipif(not available(), reason="vllm is not importable here: build .venv-vllm with "
                                                        "`make vllm` and run `make test-vllm`")


# --------------------------------------------------------------------------- the correction (no vLLM)


def test_truncated_is_weights_hand_computed():
    # token 0: pi_train = 0.5, pi_vllm = 0.25 -> ratio 2 (capped at 1.5); token 1: 0.2 / 0.4 -> 0.5;
    # token 2: equal -> 1; token 3: masked -> 0
    train = torch.log(torch.tensor([[0.5, 0.2, 0.3, 0.9]]))
    engine = torch.log(torch.tensor([[0.25, 0.4, 0.3, 0.1]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    w, st = truncated_is_weights(train, engine, mask, cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 1.0, 0.0]]), atol=1e-6)
    assert st["is_ratio_mean"] == pytest.approx((2.0 + 0.5 + 1.0) / 3, rel=1e-5)
    assert st["is_ratio_max"] == pytest.approx(2.0, rel=1e-5)
    assert st["is_frac_capped"] == pytest.approx(1 / 3)
    assert st["engine_logp_gap"] == pytest.approx((math.log(2) + math.log(2) + 0.0) / 3, rel=1e-5)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="is_cap"):
        truncated_is_weights(train, engine, mask, cap=0.0)


class _Batch:  # the fields of pfkit.data.samplers.GroupBatch that update() reads
    def __init__(self, ro, rewards):
        self.payload, self.rewards = [ro], rewards
        self.generated_rewards, self.rollouts, self.dropped, self.prompt_ids = rewards, rewards.numel(), 0, [0]


def _tiny():
    from pfkit.models import load_policy

    return load_policy("embedded")


def test_update_weights_each_token_loss_by_the_capped_ratio():
    """One GRPO update with is_cap: the gradient is that of sum_t min(pi/pi_engine, C) * surrogate_t / n_tokens,
    computed here by hand from the same log-probs (pi_engine = the rollout's log-probs shifted per token)."""
    from pfkit.rollout import generate, sequence_logprobs

    torch.manual_seed(0)
    model, tok = _tiny()
    # four different prompts as one "group" (shared_prefix off): distinct responses, so the advantages do not
    # cancel in the gradient
    ro = generate(model, tok, ["def f(x):\n", "def add(a, b):\n", "class A:\n", "def g(s):\n    s ="],
                  max_new_tokens=6, seed=0)
    shift = torch.linspace(-1.0, 1.0, ro.response_len)[None, :].expand_as(ro.logprobs)
    eng = Rollout(**{**ro.__dict__, "logprobs": (ro.logprobs + shift) * ro.response_mask})
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    cfg = grpo.GRPOConfig(prompts_per_step=1, group_size=4, is_cap=1.5, max_grad_norm=None, shared_prefix=False)

    def grads(run):
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, read the gradient
        run(opt)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    stats = {}
    g_kit = grads(lambda opt: stats.update(grpo.update(model, opt, _Batch(eng, rewards), cfg)[0]))

    def by_hand(opt):
        model.train()
        logp = sequence_logprobs(model, eng.sequences, eng.attention_mask, eng.response_len)
        m = eng.response_mask.float()
        w = torch.clamp(torch.exp(logp.detach() - eng.logprobs), max=1.5) * m
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        ratio = torch.exp(logp - logp.detach())  # = 1, gradient d logp
        surrogate = -adv.reshape(-1, 1) * ratio  # inside the clip range at ratio 1
        ((w * surrogate * m).sum() / m.sum()).backward()
        model.eval()

    g_hand = grads(by_hand)
    assert g_hand.norm() > 1e-3 and (g_kit - g_hand).norm() <= 1e-4 * g_hand.norm()
    assert stats["is_frac_capped"] > 0 and stats["is_ratio_max"] > 1.5
    # several epochs: the ratio's denominator is the trainer's own log-prob before the update, not the engine's
    # (lr 0 keeps the weights, so each epoch's gradient is the one-epoch gradient)
    cfg.ppo_epochs = 2
    g_two = grads(lambda opt: grpo.update(model, opt, _Batch(eng, rewards), cfg))
    assert (g_two - g_hand).norm() <= 1e-4 * g_hand.norm()
    cfg.ppo_epochs = 1
    cfg.is_cap = None  # off: a different gradient (the plain surrogate)
    g_off = grads(lambda opt: grpo.update(model, opt, _Batch(eng, rewards), cfg))
    assert (g_off - g_hand).norm() > 1e-2 * g_hand.norm()


def test_module_turns_the_correction_off_for_the_hf_engine():
    from pfkit.modules.grpo import GRPOModule

    assert GRPOModule(policy=None, engine="hf", is_cap=2.0).config.is_cap is None
    assert GRPOModule(policy=None, engine="vllm", is_cap=3.0).config.is_cap == 3.0
    with pytest.raises(ValueError, match="engine must be"):
        GRPOModule(policy=None, engine="sglang")


def test_stop_strings_for_vllm_cover_pfkit_stops():
    strings = vllm_stop_strings(CODE_STOPS)
    assert "\ndef" in strings and "\nx" in strings and "\n)" in strings and "\n " not in strings
    assert vllm_stop_strings([re.compile("foo+")]) == []  # other regexes: cut after the fact only
    # every DEDENT match on ASCII text begins one of the early-stop strings
    text = "    return 1\nprint(2)"
    cut = find_stop(text, [DEDENT])
    assert any(text[cut:].startswith(s) for s in strings)


def test_chunks_fit_the_token_budget_and_request_cap():
    assert list(_chunks([3, 3, 3, 3], budget=7, max_requests=10)) == [(0, 2), (2, 4)]
    assert list(_chunks([3, 3, 3, 3], budget=100, max_requests=3)) == [(0, 3), (3, 4)]
    assert list(_chunks([9, 1], budget=5, max_requests=10)) == [(0, 1), (1, 2)]  # a long one goes alone


# ------------------------------------------------------------------------------- the engine (vLLM)


@pytest.fixture(scope="module")
def engine():
    if not available():
        pytest.skip("vllm is not importable here: build .venv-vllm with `make vllm` and run `make test-vllm`")
    from pfkit.rollout.vllm import VLLMEngine

    model, tok = _tiny()
    eng = VLLMEngine(model, tok, path="embedded", max_new_tokens=48)
    yield eng, model, tok
    eng.close()


def _prompts(n=8):
    from pfkit.tasks import codegen

    return [p.prompt for p in codegen.splits(seed=0)["train"][:n]]


@needs_vllm
@pytest.mark.vllm
def test_engine_logprobs_agree_with_the_hf_forward(engine):
    from pfkit.rollout import generate, sequence_logprobs

    eng, model, tok = engine
    ro = eng.generate(_prompts(), max_new_tokens=48, group_size=4, stop=CODE_STOPS, seed=3)
    assert len(ro) == 32 and ro.prompt_index.tolist() == [i // 4 for i in range(32)]
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_len)
    m = ro.response_mask.bool()
    gap = (lp - ro.logprobs)[m].abs()
    print(f"log-prob gap vLLM vs HF forward: max {gap.max():.2e}, mean {gap.mean():.2e} over {int(m.sum())} tokens")
    assert gap.max() < 1e-4
    # the Rollout contract: texts are the kept tokens' decode cut at the stop; EOS kept in the mask
    for b in range(len(ro)):
        ids = ro.response_ids[b][m[b]].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        assert text.startswith(ro.texts[b]) and find_stop(ro.texts[b], CODE_STOPS) is None
        assert (ro.finish_reasons[b] == "eos") == (bool(ids) and ids[-1] == tok.eos_token_id)
    # greedy decoding is the same argmax path as pfkit's own decoder
    hf = generate(model, tok, _prompts(4), max_new_tokens=32, temperature=0.0, stop=CODE_STOPS)
    vl = eng.generate(_prompts(4), max_new_tokens=32, temperature=0.0, stop=CODE_STOPS)
    assert vl.texts == hf.texts and torch.equal(vl.response_mask.sum(1), hf.response_mask.sum(1))


@needs_vllm
@pytest.mark.vllm
def test_weight_push_changes_samples_and_restoring_restores_them(engine):
    eng, model, tok = engine
    kw = dict(max_new_tokens=32, group_size=2, stop=CODE_STOPS, seed=11)
    before = eng.generate(_prompts(4), **kw)
    assert eng.generate(_prompts(4), **kw).texts == before.texts  # seeded: repeatable
    assert eng.generate(_prompts(4), **{**kw, "seed": 12}).texts != before.texts
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)) * 0.05)
        t = eng.push(model)
        print(f"weight push: {t * 1e3:.1f} ms")
        after = eng.generate(_prompts(4), **kw)
        assert after.texts != before.texts
        from pfkit.rollout import sequence_logprobs

        with torch.no_grad():  # the engine samples from the pushed weights, tied lm_head included
            lp = sequence_logprobs(model, after.sequences, after.attention_mask, after.response_len)
        assert (lp - after.logprobs)[after.response_mask.bool()].abs().max() < 1e-4
    finally:
        model.load_state_dict(saved)
        eng.push(model)
    restored = eng.generate(_prompts(4), **kw)
    assert restored.texts == before.texts and torch.equal(restored.sequences, before.sequences)


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_fit_end_to_end_with_the_engine(tmp_path):
    """``pfkit fit`` with engine=vllm (a subprocess): two GRPO steps on the embedded policy, weights pushed after
    each, the truncated-IS stats logged, rollouts written. The reward (even response length, a verifier module
    written here) varies within groups, so every step trains through the correction."""
    import json

    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    (tmp_path / "evenlen.py").write_text("def reward(prompt, completion):\n    return float(len(completion) % 2 == 0)\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": p.task_id, "prompt": p.prompt})
                                 for p in codegen.splits(seed=0)["train"][:12]))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pfkit.cli", "fit", "-c", str(ROOT / "configs/grpo_codegen.yaml"), "--run_dir", str(run),
           "--model.init_args.engine", "vllm", "--model.init_args.sampler", "uniform",
           "--model.init_args.prompts_per_step", "4", "--model.init_args.group_size", "4",
           "--model.init_args.lr", "1e-3", "--model.init_args.max_new_tokens", "32",
           "--data.init_args.task", "jsonl", "--data.init_args.prompts_file", str(prompts),
           "--data.init_args.verifier", "evenlen:reward",
           "--data.init_args.n_train", "8", "--data.init_args.n_val", "4", "--data.init_args.steps_per_epoch", "2",
           "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = RunDir(run).metrics()
    steps = metrics.dropna(subset=["train/step_time"])
    assert len(steps) == 2 and (steps["train/engine_push_time"] > 0).all()
    print("GRPO step time (s):", steps["train/step_time"].round(2).tolist(),
          "push (s):", steps["train/engine_push_time"].round(3).tolist(),
          "log-prob gap:", steps["train/engine_logp_gap"].tolist())
    assert (steps["train/effective_samples"] > 0).all() and steps["train/loss"].notna().all()
    assert (steps["train/engine_logp_gap"] < 1e-4).all()  # float32 engine: the ratios are ~1
    assert ((steps["train/is_ratio_mean"] - 1).abs() < 1e-3).all() and (steps["train/is_frac_capped"] == 0).all()
    rollouts = RunDir(run).read("rollouts")
    assert len(rollouts) == 2 * 4 * 4 and set(rollouts["reward"]) == {0.0, 1.0}
