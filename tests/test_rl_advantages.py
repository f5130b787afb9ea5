"""pfkit.rl.advantages against hand-computed values."""

import math

import pytest
import torch

from pfkit.rl.advantages import gae, group_relative, masked_mean, whiten


def test_gae_hand_computed_full_mask():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # delta_2 = 1 - .7 = .3; delta_1 = .7 - .6 = .1; delta_0 = .6 - .5 = .1
    # A_2 = .3; A_1 = .1 + .95*.3 = .385; A_0 = .1 + .95*.385 = .46575
    torch.testing.assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0]]))


def test_gae_episode_ends_at_last_masked_token_and_padding_is_zero():
    r = torch.tensor([[0.0, 1.0, 9.0]])  # the 9 sits in padding and must be ignored
    v = torch.tensor([[0.5, 0.6, 5.0]])
    adv, ret = gae(r, v, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.95)
    # A_1 = 1 - .6 = .4 (V after the end = 0); A_0 = (.6 - .5) + .95*.4 = .48
    torch.testing.assert_close(adv, torch.tensor([[0.48, 0.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.98, 1.0, 0.0]]))


def test_gae_discounting():
    adv, ret = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    # A_1 = 2 - 1 = 1; delta_0 = 1 + .9*1 - .5 = 1.4; A_0 = 1.4 + .45*1 = 1.85
    torch.testing.assert_close(adv, torch.tensor([[1.85, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.35, 2.0]]))


def test_gae_lambda_one_gives_monte_carlo_returns():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5, [1] * 3 + [0] * 3]).float()
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    rtg = torch.flip(torch.cumsum(torch.flip(r * mask, [1]), 1), [1]) * mask
    torch.testing.assert_close(ret, rtg)
    torch.testing.assert_close(adv, (rtg - v) * mask)


def test_gae_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="must all be"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 0.95)


def test_group_relative_std_and_none():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_relative(r, 4)
    s = 0.5 / math.sqrt(1 / 3)  # unbiased std of (1,0,0,1) is sqrt(1/3)
    torch.testing.assert_close(a, torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_relative(r, 4, scale="none"),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    torch.testing.assert_close(group_relative(r, 4, unbiased=False)[:4],
                               torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=1e-5)
    assert torch.equal(group_relative(torch.tensor([3.0, 4.0]), 1), torch.zeros(2))
    with pytest.raises(ValueError, match="groups of 3"):
        group_relative(r, 3)


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    w = whiten(x, torch.tensor([[1, 1, 1, 0]]))
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    assert masked_mean(x, torch.tensor([[1, 0, 1, 0]])).item() == 2.0
    torch.testing.assert_close(whiten(x[:, :3], shift_mean=False), x[:, :3], atol=1e-6, rtol=0)
