"""The controlled-noise reward oracle: noise statistics per profile against the formulas in its docstring."""

import numpy as np
import pytest
import torch

from pfkit.rl.oracle import PROFILES, noise_scale, oracle_rewards


def draw(profile, n=200_000, sigma=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(n, generator=g) < 0.4).float()
    reward, clean = oracle_rewards(scores, profile, sigma, generator=g)
    return scores.numpy(), reward.numpy(), clean.numpy()


def test_clean_reward_ranks_every_pass_above_every_fail():
    s, _, c = draw("exact", n=10_000)
    assert c[s == 1].min() >= 0.5 > c[s == 0].max()
    assert np.allclose(c[s == 0].mean(), 0.25, atol=0.01) and np.allclose(c[s == 1].mean(), 0.75, atol=0.01)


@pytest.mark.parametrize("profile,w", [("uniform", lambda c: 1.0), ("noisy_middle", lambda c: 6 * c * (1 - c)),
                                       ("noisy_top", lambda c: 2 * c)])
def test_noise_std_per_region_follows_the_profile(profile, w):
    _, r, c = draw(profile)
    for lo in (0.05, 0.2, 0.45, 0.55, 0.8, 0.9):  # narrow bins of the clean reward
        m = (c >= lo) & (c < lo + 0.04)
        expected = 0.3 * w(lo + 0.02)
        assert np.std(r[m] - c[m]) == pytest.approx(expected, rel=0.06, abs=0.004), (profile, lo)


def test_profiles_have_equal_mean_noise_over_the_clean_range():
    c = torch.linspace(0, 1, 100_001)
    for profile in ("uniform", "noisy_middle", "noisy_top", "pure_noise"):
        assert noise_scale(c, profile, 0.3).mean().item() == pytest.approx(0.3, rel=1e-3)


def test_bounds_exact_and_pure_noise():
    s, r, c = draw("exact", n=50_000)
    assert np.array_equal(r, c)
    s, r, _ = draw("pure_noise", n=50_000)
    assert abs(np.corrcoef(r, s)[0, 1]) < 0.02 and np.std(r) == pytest.approx(0.3, rel=0.02)


def test_deterministic_given_a_generator_and_checked_inputs():
    a = oracle_rewards(torch.tensor([0.0, 1.0, 1.0]), generator=torch.Generator().manual_seed(3))[0]
    b = oracle_rewards(torch.tensor([0.0, 1.0, 1.0]), generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown oracle profile"):
        oracle_rewards(torch.zeros(2), "noisy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        oracle_rewards(torch.tensor([2.0]))
    assert set(PROFILES) == {"uniform", "noisy_middle", "noisy_top", "exact", "score", "pure_noise"}


def test_score_profile_is_the_unit_test_score_and_exact_carries_the_tie_breaker():
    """``score`` is the noise-free bound (r = s); ``exact``'s tie-breaker u holds 1/48 of variance against
    p(1-p)/4 from the tests: at p = 0.07 that is 57% of the reward's variance, as its docstring says."""
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(200_000, generator=g) < 0.07).float()
    r, c = oracle_rewards(scores, "score", 0.3, generator=g)
    assert torch.equal(r, scores) and torch.equal(c, scores)
    r, _ = oracle_rewards(scores, "exact", 0.3, generator=g)
    p = scores.mean().item()
    share = (1 / 48) / (1 / 48 + p * (1 - p) / 4)
    assert share == pytest.approx(0.57, abs=0.01)
    assert 1 - np.corrcoef(r.numpy(), scores.numpy())[0, 1] ** 2 == pytest.approx(share, abs=0.01)
