"""pfkit.rl.losses against hand-computed values."""

import math

import pytest
import torch

from pfkit.rl.losses import aggregate, kl, policy_loss, value_loss

L = math.log


def test_token_ratio_ppo_clip_hand_computed():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[L(1.5), L(0.5), L(1.1)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, st = policy_loss(logp, old, adv, torch.ones(1, 3))
    # per token max(-A r, -A clip(r)): 1.5 -> -1.2 (clipped), 0.5 -> 0.8 (clipped), 1.1 -> -1.1
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3)
    assert st["clip_frac"].item() == pytest.approx(2 / 3)
    loss.backward()
    # clipped tokens get no gradient; d/dlogp (-A r)/3 = -1.1/3 for the last
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -1.1 / 3]]))


def test_clip_higher_is_asymmetric():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[L(1.5), L(0.5), L(1.1)]])
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, st = policy_loss(logp, old, adv, torch.ones(1, 3), clip_low=0.2, clip_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 0.8 - 1.1) / 3)
    assert st["clip_frac"].item() == pytest.approx(1 / 3)


def test_sequence_ratio_gspo_and_aggregations():
    old = torch.zeros(2, 2)
    logp = torch.tensor([[L(2.0), 0.0], [L(0.9), 7.0]], requires_grad=True)  # 7.0 is padding
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])  # per-sequence advantages, broadcast
    # s_1 = exp(mean(log 2, 0)) = sqrt 2 -> clipped to 1.2; s_2 = 0.9
    loss, st = policy_loss(logp, old, adv, mask, ratio_level="sequence", agg="seq-mean")
    assert loss.item() == pytest.approx((-1.2 - 0.9) / 2)
    assert st["ratio_mean"].item() == pytest.approx((2 * math.sqrt(2) + 0.9) / 3)
    loss.backward()
    # only sequence 2 is unclipped: d/dlogp_21 of -0.5 * exp(logp_21) = -0.45; padding gets nothing
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0], [-0.45, 0.0]]))
    tok, _ = policy_loss(logp.detach(), old, adv, mask, ratio_level="sequence", agg="token-mean")
    assert tok.item() == pytest.approx((-1.2 * 2 - 0.9) / 3)


def test_sequence_ratio_equals_token_ratio_for_one_token_responses():
    g = torch.Generator().manual_seed(1)
    logp, old, adv = (torch.randn(5, 1, generator=g) * 0.3 for _ in range(3))
    a, _ = policy_loss(logp, old, adv, torch.ones(5, 1), ratio_level="token")
    b, _ = policy_loss(logp, old, adv, torch.ones(5, 1), ratio_level="sequence")
    torch.testing.assert_close(a, b)


def test_bad_options_raise():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ratio_level"):
        policy_loss(x, x, x, x + 1, ratio_level="word")
    with pytest.raises(ValueError, match="agg"):
        aggregate(x, x + 1, "sum")
    with pytest.raises(ValueError, match="estimator"):
        kl(x, x, "k4")


def test_value_loss_clipped_hand_computed():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    loss, st = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 1: max((1-2)^2, (0.7-2)^2) = 1.69; token 2: max(0, 0.3^2) = 0.09; 0.5 * mean
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert st["vf_clip_frac"].item() == 1.0
    plain, _ = value_loss(v, old, ret, torch.ones(1, 2), clip=None)
    assert plain.item() == pytest.approx(0.25)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([L(0.5)]), torch.tensor([L(0.25)])
    assert kl(logp, ref, "k1").item() == pytest.approx(L(2))
    assert kl(logp, ref, "k2").item() == pytest.approx(0.5 * L(2) ** 2)
    assert kl(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + L(2))


def test_k1_k3_are_unbiased_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])  # reference
    exact = (p * (p / q).log()).sum()
    for est in ("k1", "k3"):
        expectation = (p * kl(p.log(), q.log(), est)).sum()  # E_{x~p}[k(x)]
        torch.testing.assert_close(expectation, exact)
    assert (kl(p.log(), q.log(), "k3") >= 0).all()
