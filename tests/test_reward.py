"""Reward model: Bradley-Terry loss, scalar head on the policy backbone, pair building, training on a tiny GPT-2."""

import math
import random

import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer

from pfkit import models
from pfkit.data.preference import (
    PreferenceDataModule,
    edit_distance,
    make_pairs,
    split_by_prompt,
    synthetic_pairs,
)
from pfkit.models import ScalarHeadModel, encode
from pfkit.modules.reward import RewardModule, bradley_terry_loss
from pfkit.tasks import codegen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    probs = codegen.generate(48, seed=3)
    tok = models.train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=300)
    torch.manual_seed(0)
    policy = models.build_policy(tok, n_layer=2, n_embd=48, n_head=2)
    return probs, tok, policy


def test_bradley_terry_hand_computed():
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected)


def test_score_is_last_token_and_padding_invariant(tiny):
    probs, tok, policy = tiny
    rm = ScalarHeadModel.from_policy(policy).eval()
    short, long = probs[0], probs[1]
    both = encode(tok, [short.prompt, long.prompt], [short.reference, long.reference])
    alone = encode(tok, [short.prompt], [short.reference])
    assert both["attention_mask"][0, 0] == 0  # the short one is left-padded
    with torch.no_grad():
        s_both = rm.score(both["input_ids"], both["attention_mask"])
        s_alone = rm.score(alone["input_ids"], alone["attention_mask"])
        values = rm(alone["input_ids"], alone["attention_mask"])
    torch.testing.assert_close(s_both[0], s_alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_alone[0], values[0, -1], atol=1e-5, rtol=1e-5)
    assert alone["input_ids"][0, -1] == tok.eos_token_id


def test_make_pairs_and_split():
    df = pd.DataFrame({"prompt_id": ["a"] * 4 + ["b"] * 3 + ["c"] * 2,
                       "prompt": ["pa"] * 4 + ["pb"] * 3 + ["pc"] * 2,
                       "response": ["x", "y", "z", "z", "u", "v", "w", "s", "t"],
                       "passed": [1, 0, 0, 0, 1, 1, 1, 0, 0]})
    pairs = make_pairs(df, max_pairs_per_prompt=10)
    # a: x > y, x > z (z deduplicated); b: all pass and c: all fail give no pairs
    assert sorted(map(tuple, pairs[["chosen", "rejected"]].values.tolist())) == [("x", "y"), ("x", "z")]
    assert len(make_pairs(df, max_pairs_per_prompt=1)) == 1
    tr, va = split_by_prompt(df, val_fraction=0.34, seed=0)
    assert set(tr.prompt_id).isdisjoint(va.prompt_id) and len(tr) + len(va) == len(df)
    assert va.prompt_id.nunique() == 1


def test_save_load_and_critic_folding(tiny, tmp_path):
    probs, tok, policy = tiny
    rm = ScalarHeadModel.from_policy(policy).eval()
    rm.reward_mean.fill_(0.3)
    rm.reward_std.fill_(2.0)
    rm.save(tmp_path / "rm", tok)
    back = ScalarHeadModel.load(tmp_path / "rm")
    prompts, resp = [p.prompt for p in probs[:3]], [p.reference for p in probs[:3]]
    torch.testing.assert_close(back.score_texts(tok, prompts, resp), rm.score_texts(tok, prompts, resp))
    raw = rm.score_texts(tok, prompts, resp, normalize=False)
    torch.testing.assert_close(rm.score_texts(tok, prompts, resp), (raw - 0.3) / 2.0)
    critic = rm.as_critic()
    torch.testing.assert_close(critic.score_texts(tok, prompts, resp, normalize=False), (raw - 0.3) / 2.0,
                               atol=1e-5, rtol=1e-5)
    assert back.meta["policy_fingerprint"] == rm.meta["policy_fingerprint"] != ""
    with pytest.raises(FileNotFoundError, match="not a saved reward model"):
        ScalarHeadModel.load(tmp_path)


def test_bradley_terry_training_learns_pass_vs_fail(tiny, tmp_path):
    """Chosen = reference (passes), rejected = a one-step-wrong variant: train accuracy must rise and the
    saved model must score held-out references above their wrong variants more often than chance."""
    probs, tok, policy = tiny
    rng = random.Random(0)
    rows = []
    for p in probs:
        wrong = codegen.wrong_completion(p, rng)
        if wrong is None:
            continue
        rows += [{"prompt_id": p.task_id, "prompt": p.prompt, "response": p.reference, "passed": 1},
                 {"prompt_id": p.task_id, "prompt": p.prompt, "response": wrong, "passed": 0}]
    samples = pd.DataFrame(rows)
    dm = PreferenceDataModule(samples=samples, val_fraction=0.25, batch_size=8, seed=0)
    dm.tokenizer = tok
    module = RewardModule.from_models(policy, tok, lr=3e-3, warmup_steps=1, save_to=str(tmp_path / "rm"))
    dm.setup()
    before = _pair_acc(module.rm, tok, dm.train_pairs)
    trainer = Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after = _pair_acc(module.rm, tok, dm.train_pairs)
    assert after > max(0.8, before + 0.2), (before, after)
    assert "val/acc" in trainer.callback_metrics
    saved = ScalarHeadModel.load(tmp_path / "rm")
    # keep_best: the saved weights are the best held-out epoch's, and their accuracy is the one recorded
    assert saved.meta["val/acc"] >= float(trainer.callback_metrics["val/acc"]) - 1e-9
    assert _pair_acc(saved, tok, dm.val_pairs) == pytest.approx(saved.meta["val/acc"])
    # calibrated on the training responses: their normalised rewards have mean 0, std 1
    r = saved.score_texts(tok, list(dm.train_samples.prompt), list(dm.train_samples.response))
    assert abs(r.mean().item()) < 1e-3 and r.std().item() == pytest.approx(1.0, abs=1e-3)


def _pair_acc(rm, tok, pairs):
    c = rm.score_texts(tok, list(pairs.prompt), list(pairs.chosen), normalize=False)
    r = rm.score_texts(tok, list(pairs.prompt), list(pairs.rejected), normalize=False)
    return (c > r).float().mean().item()


def test_encode_response_mask_marks_response_and_eos(tiny):
    _, tok, _ = tiny
    enc = encode(tok, ["def f(x):\n", "def g(y):\n    '''doc'''\n"], ["    return x\n", "    return y\n"])
    for i, (prompt, resp) in enumerate([("def f(x):\n", "    return x\n"),
                                       ("def g(y):\n    '''doc'''\n", "    return y\n")]):
        n_resp = len(tok(resp, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        n_all = len(tok(prompt, add_special_tokens=False)["input_ids"]) + n_resp
        assert enc["response_mask"][i].sum().item() == n_resp
        assert enc["attention_mask"][i].sum().item() == n_all
        assert enc["response_mask"][i, -n_resp:].all()  # the last n_resp positions (left padding)


def test_likelihood_term_adds_the_policy_log_likelihood_of_the_response(tiny, tmp_path):
    """Reward = head(last hidden) + w * sum log p(response tokens + EOS), with the log-probs from the copied
    LM head: at initialisation that is the policy's own likelihood, computed here by a plain forward."""
    probs, tok, policy = tiny
    rm = ScalarHeadModel.from_policy(policy, likelihood_term=True).eval()
    with torch.no_grad():
        rm.likelihood_weight.fill_(0.5)
    prompts, resp = [p.prompt for p in probs[:3]], [p.reference for p in probs[:3]]
    got = rm.score_texts(tok, prompts, resp, normalize=False)
    plain = ScalarHeadModel.from_policy(policy).eval()
    plain.head.load_state_dict(rm.head.state_dict())
    head_part = plain.score_texts(tok, prompts, resp, normalize=False)
    policy.eval()
    for i, (p, r) in enumerate(zip(prompts, resp)):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        expected = head_part[i] + 0.5 * logp[len(p_ids) - 1:].sum()
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-3)
    with pytest.raises(ValueError, match="response_mask"):
        enc = encode(tok, prompts, resp)
        rm.score(enc["input_ids"], enc["attention_mask"])
    # save/load keeps the term (and the LM head tied to the embeddings); the critic drops it
    rm.save(tmp_path / "rm", tok)
    back = ScalarHeadModel.load(tmp_path / "rm")
    assert back.has_likelihood_term
    assert back.lm_head.weight.data_ptr() == back.backbone.get_input_embeddings().weight.data_ptr()
    torch.testing.assert_close(back.score_texts(tok, prompts, resp, normalize=False), got)
    critic = rm.as_critic()
    assert not critic.has_likelihood_term and "likelihood_weight" not in dict(critic.named_parameters())
    torch.testing.assert_close(critic.score_texts(tok, prompts, resp, normalize=False), head_part)


def test_synthetic_pairs_prefer_the_reference_over_a_failing_near_miss():
    from pfkit.sandbox import check_completions

    probs = codegen.generate(12, seed=5)
    pairs = synthetic_pairs(probs, per_prompt=2, seed=0)
    assert len(pairs) >= len(probs) and set(pairs.prompt_id) <= {p.task_id for p in probs}
    by_id = {p.task_id: p for p in probs}
    flat = [by_id[i] for i in pairs.prompt_id]
    assert all(v.passed for v in check_completions(flat, list(pairs.chosen)))
    assert not any(v.passed for v in check_completions(flat, list(pairs.rejected)))
    assert (pairs.chosen != pairs.rejected).all()


def test_synthetic_pairs_need_embedded_task_prompts(tiny):
    _, tok, _ = tiny
    df = pd.DataFrame({"prompt_id": ["mbpp/1"] * 2 + ["mbpp/2"] * 2, "prompt": ["a"] * 2 + ["b"] * 2,
                       "response": ["x", "y", "u", "v"], "passed": [1, 0, 1, 0]})
    dm = PreferenceDataModule(samples=df, val_fraction=0.5, synthetic_per_prompt=2)
    dm.tokenizer = tok
    with pytest.raises(ValueError, match="synthetic_per_prompt needs embedded-task prompts"):
        dm.setup()


def test_edit_distance_hand_computed():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0


def test_make_pairs_max_edit_keeps_the_furthest_pass_fail_pairs():
    """The paper pairs the responses furthest apart in edit distance: with one pair per prompt, the
    passing response is matched with the failing one that differs most from it."""
    rows = [("p", "return x + 1", 1), ("p", "return x + 2", 0), ("p", "y = x * 9\n    return y - 7", 0)]
    samples = pd.DataFrame([{"prompt_id": pid, "prompt": "def f(x):", "response": r, "score": sc}
                            for pid, r, sc in rows])
    far = make_pairs(samples, max_pairs_per_prompt=1, selection="max_edit")
    assert list(far.rejected) == ["y = x * 9\n    return y - 7"]
    both = make_pairs(samples, max_pairs_per_prompt=2, selection="max_edit")
    assert list(both.rejected) == ["y = x * 9\n    return y - 7", "return x + 2"]
    assert len(make_pairs(samples, max_pairs_per_prompt=2, selection="random")) == 2
    with pytest.raises(ValueError, match="max_edit"):
        make_pairs(samples, selection="closest")


def test_extra_split_exclude_keeps_named_splits_disjoint():
    """Two extra splits are drawn independently and overlap; ``exclude`` makes them disjoint (the reward
    model's synthetic prompts must not include the study's evaluation problems)."""
    ev = {p.meta["fingerprint"] for p in codegen.extra_split("t_eval", 200)}
    plain = {p.meta["fingerprint"] for p in codegen.extra_split("t_rm", 600)}
    kept = codegen.extra_split("t_rm", 600, exclude={"t_eval": 200})
    fps = {p.meta["fingerprint"] for p in kept}
    assert plain & ev, "the test needs overlapping splits to mean anything"
    assert len(kept) == 600 and not fps & ev
    fixed = {p.meta["fingerprint"] for ps in codegen.splits(0).values() for p in ps}
    assert not fps & fixed
