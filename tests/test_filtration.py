"""pfkit.rl.filtration: kept sets on hand-made rewards, ties, R² against numpy/scipy."""

import numpy as np
import pytest
import torch
from scipy import stats

from pfkit.rl.filtration import (
    RankWeights,
    RankWindow,
    inclusion_probs,
    paper_weights,
    r_squared,
    ranks,
    select,
)

R = torch.tensor([[0.1, 0.9, -0.5, 0.3, 0.2],
                  [2.0, 1.0, 3.0, -1.0, 0.0]])


def test_none_bon_bw_kept_sets():
    assert select(R, "none").all()
    assert select(R, "bon").tolist() == [[False, True, False, False, False], [False, False, True, False, False]]
    assert select(R, "bw").tolist() == [[False, True, True, False, False], [False, False, True, True, False]]
    assert select(R, "best-worst").equal(select(R, "bw"))


def test_br_keeps_best_plus_one_uniform_other():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2, 5)
    trials = 4000
    for _ in range(trials):
        m = select(R, "br", generator=g)
        assert m.sum(1).tolist() == [2, 2]
        assert m[0, 1] and m[1, 2]  # the best is always kept
        counts += m.float()
    others = torch.cat([counts[0, [0, 2, 3, 4]], counts[1, [0, 1, 3, 4]]]) / trials
    assert torch.allclose(others, torch.full_like(others, 0.25), atol=0.03)


def test_br_is_reproducible_with_a_generator():
    a = select(R, "br", generator=torch.Generator().manual_seed(7))
    b = select(R, "br", generator=torch.Generator().manual_seed(7))
    assert a.equal(b)


def test_ties_are_deterministic_and_documented():
    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    assert ranks(tied).tolist() == [[1, 2, 0, 3, 4], [0, 1, 2, 3, 4]]
    assert select(tied, "bon").tolist() == [[False, True, False, False, False], [True, False, False, False, False]]
    # worst = the last minimum; all-equal still keeps two (first and last)
    assert select(tied, "bw").tolist() == [[False, True, False, False, True], [True, False, False, False, True]]


def test_general_forms_cover_the_named_strategies():
    assert select(R, RankWindow(ranks=(0, -1))).equal(select(R, "bw"))
    assert select(R, RankWindow(ranks=(0, 1))).tolist() == [[False, True, False, True, False],
                                                            [True, False, True, False, False]]
    assert select(R, RankWeights(paper_weights("bw", 5), draws=50), torch.Generator().manual_seed(0)).equal(
        select(R, "bw"))
    assert select(R, RankWeights(paper_weights("bon", 5), draws=3)).equal(select(R, "bon"))
    assert paper_weights("br", 5) == (0.5, 0.125, 0.125, 0.125, 0.125)
    with pytest.raises(ValueError, match="unknown filtration strategy"):
        select(R, "top3")
    with pytest.raises(ValueError, match="NaN"):
        select(torch.tensor([[1.0, float("nan")]]), "bon")


def test_paper_br_selection_frequencies_match_inclusion_probs():
    rewards = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.2]]).expand(20000, 5)
    kept = select(rewards, "paper-br", torch.Generator().manual_seed(0)).double().mean(0)
    assert torch.allclose(kept, inclusion_probs(rewards[:1], "paper-br")[0], atol=0.01)


def test_inclusion_probs():
    p = inclusion_probs(R, "br")
    assert p[0].tolist() == [0.25, 1.0, 0.25, 0.25, 0.25]
    assert inclusion_probs(R, "bw").bool().equal(select(R, "bw"))
    q = inclusion_probs(R, RankWeights((0.5, 0.5, 0, 0, 0), draws=2))
    assert q[0].tolist() == [0.0, 0.75, 0.0, 0.75, 0.0]


def test_r_squared_matches_scipy_and_pearson():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = (x + rng.normal(size=200) > 0).astype(float)
    expected = stats.linregress(x, y).rvalue ** 2
    assert r_squared(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-10)
    assert r_squared(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-10)
    # weights = repeating samples: integer weights equal duplicating rows
    w = rng.integers(0, 3, size=200)
    dup_x, dup_y = np.repeat(x, w), np.repeat(y, w)
    assert r_squared(x, y, weights=w) == pytest.approx(stats.linregress(dup_x, dup_y).rvalue ** 2, rel=1e-10)


def test_r_squared_binned_hand_computed():
    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0])
    y = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    # quantile bins of 2: means (0.5, 0), (2.5, 0.5), (10.5, 1)
    bx, by = np.array([0.5, 2.5, 10.5]), np.array([0.0, 0.5, 1.0])
    assert r_squared(x, y, bins=3) == pytest.approx(stats.linregress(bx, by).rvalue ** 2)
    # width bins over [0, 11] in 2: [0, 5.5) -> (1.5, .25), [5.5, 11] -> (10.5, 1): two points, R² = 1
    assert r_squared(x, y, bins=2, binning="width") == pytest.approx(1.0)


def test_r_squared_degenerate_cases():
    assert np.isnan(r_squared([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]))
    assert r_squared([1.0, 1.0, 1.0], [0.0, 1.0, 1.0]) == 0.0
    assert np.isnan(r_squared([1.0], [1.0]))
    with pytest.raises(ValueError, match="same number"):
        r_squared([1.0, 2.0], [1.0])


def test_filtering_on_a_noisy_middle_raises_r2():
    """The paper's premise: when the RM is reliable only at the extremes, BW's kept set tracks the score
    better than all samples do."""
    g = torch.Generator().manual_seed(0)
    P, N = 400, 5
    score = (torch.rand(P, N, generator=g) < 0.5).float()
    noise = torch.randn(P, N, generator=g)
    reward = torch.where(score > 0, 1.0, -1.0) * 0.5 + noise
    keep_bw = select(reward, "bw")
    r_all = r_squared(reward, score)
    r_bw = r_squared(reward[keep_bw], score[keep_bw])
    assert r_bw > r_all


def test_paper_weight_form_by_name():
    from pfkit.rl.filtration import resolve

    s = resolve("paper-br")
    assert isinstance(s, RankWeights) and s.draws == 2 and not s.replacement
    # two distinct draws from (1/2, 1/8 x 4), by hand: the best is kept with prob
    # 1/2 + 4 * 1/8 * (1/2)/(7/8) = 11/14; another rank with 1/8 + 1/2 * (1/8)/(1/2) + 3 * 1/8 * (1/8)/(7/8) = 17/56
    p = inclusion_probs(R, "paper-br")[0]
    assert p[1].item() == pytest.approx(11 / 14) and p[0].item() == pytest.approx(17 / 56)
    assert p.sum().item() == pytest.approx(2.0)  # the paper's "about 2 of N" kept, exactly
    for name in ("paper-br", "paper-bw"):  # every prompt keeps exactly 2 (with replacement: 1.5 for BW)
        assert select(R, name, torch.Generator().manual_seed(1)).sum(1).eq(2).all()
    assert select(R, "paper-bon").equal(select(R, "bon"))
    # with replacement (the general RankWeights form) the old union-of-draws semantics stay available
    assert inclusion_probs(R, RankWeights("br", draws=2))[0, 1].item() == pytest.approx(0.75)
    assert inclusion_probs(R, "paper-bw").bool().equal(select(R, "bw"))


def test_reliability_curve_bins_counts_and_exact_intervals():
    from scipy import stats

    from pfkit.rl.filtration import reliability_curve

    rewards = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    scores = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    curve = reliability_curve(rewards, scores, bins=2)
    assert curve["count"].tolist() == [4, 4] and curve["score_mean"].tolist() == [0.25, 0.75]
    assert curve["reward_mean"].tolist() == pytest.approx([0.25, 0.75])
    # Clopper-Pearson for 1 of 4 from the beta quantiles, independently of binomtest
    assert curve.loc[0, "ci_low"] == pytest.approx(stats.beta.ppf(0.025, 1, 4))
    assert curve.loc[0, "ci_high"] == pytest.approx(stats.beta.ppf(0.975, 2, 3))
    width = reliability_curve(np.arange(8.0), scores, bins=4, binning="width")  # edges 0, 1.75, 3.5, 5.25, 7
    assert width["count"].tolist() == [2, 2, 2, 2] and width["score_mean"].tolist() == [0.0, 0.5, 1.0, 0.5]
    frac = reliability_curve(rewards, scores * 0.5 + 0.25, bins=2)  # fractional scores: t interval
    assert frac.loc[0, "ci_low"] < frac.loc[0, "score_mean"] < frac.loc[0, "ci_high"]
