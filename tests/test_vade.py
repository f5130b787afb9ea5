"""pfkit.rl.vade.BetaTracker: the paper's worked example and score, Beta updates, two-scale decay (paper's
exclusive form and the kit's), Thompson selection, the ablation variants, state round-trip."""

import io

import pytest
import torch
from scipy import optimize

from pfkit.data.samplers import make_sampler
from pfkit.rl.vade import VARIANTS, BetaTracker, info_gain


def ab(t, i):
    return float(t.alpha[i]), float(t.beta[i])


def test_binary_update_is_conjugate_counts():
    t = BetaTracker(3, alpha0=1.0, beta0=1.0, global_decay=1.0, local_decay=1.0)
    out = t.update([0, 2], [1, 1, 0, 0, 1, 1, 1, 0], group_size=4)
    assert ab(t, 0) == (3.0, 3.0)          # 1 + 2 successes, 1 + 2 failures
    assert ab(t, 1) == (1.0, 1.0)          # untouched
    assert ab(t, 2) == (4.0, 2.0)
    assert out["successes"].tolist() == [2.0, 3.0] and out["trials"].tolist() == [4.0, 4.0]
    assert t.p_mean[2].item() == pytest.approx(4 / 6)


def test_continuous_rewards_fractional_and_threshold():
    t = BetaTracker(1, global_decay=1.0, local_decay=1.0)
    t.update([0], [0.2, 0.7, 1.0, 0.0], group_size=4)
    assert ab(t, 0) == pytest.approx((1 + 1.9, 1 + 2.1))
    t2 = BetaTracker(1, global_decay=1.0, local_decay=1.0, continuous="threshold")
    t2.update([0], [0.2, 0.7, 1.0, 0.0], group_size=4)
    assert ab(t2, 0) == (3.0, 3.0)
    t3 = BetaTracker(1, global_decay=1.0, local_decay=1.0, continuous="bernoulli", seed=3)
    t3.update([0], [0.2, 0.7, 1.0, 0.0], group_size=4)
    a, b = ab(t3, 0)
    assert a + b == 6.0 and a == int(a) and 2.0 <= a <= 4.0  # 1.0 always succeeds, 0.0 always fails


def test_two_scale_decay_hand_computed_visits_clock():
    t = BetaTracker(2, variant="kit", alpha0=1.0, beta0=1.0, global_decay=0.5, local_decay=0.5,
                    local_clock="visits")
    t.update([0], [1, 1, 0, 0], 4)           # (3, 3)
    t.step()                                  # global: evidence (2, 2) * 0.5 -> (2, 2); prompt 1 stays (1, 1)
    assert ab(t, 0) == (2.0, 2.0) and ab(t, 1) == (1.0, 1.0)
    t.update([0], [1, 1, 1, 0.5], 4)         # local: (1, 1)*0.5 -> (1.5, 1.5); + (3.5, 0.5)
    assert ab(t, 0) == pytest.approx((5.0, 2.0))


def test_local_decay_steps_clock_uses_staleness():
    t = BetaTracker(1, global_decay=1.0, local_decay=0.5, local_clock="steps")
    t.update([0], [1, 1, 1, 1], 4)           # (5, 1) seen at step 0
    t.step()
    t.step()                                  # two steps unseen -> factor 0.5 ** 2
    t.update([0], [0, 0, 0, 0], 4)           # (1 + 0.25 * 4, 1) + (0, 4)
    assert ab(t, 0) == pytest.approx((2.0, 5.0))


def test_decay_never_crosses_prior():
    t = BetaTracker(1, alpha0=2.0, beta0=3.0, global_decay=0.1, local_decay=1.0)
    t.update([0], [1, 1], 2)
    for _ in range(50):
        t.step()
    assert ab(t, 0) == pytest.approx((2.0, 3.0))


def test_bad_rewards_raise():
    t = BetaTracker(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t.update([0], [1.5, 0.0], 2)
    with pytest.raises(ValueError, match="expected 2 prompts"):
        t.update([0, 1], [1.0, 0.0], 2)
    with pytest.raises(ValueError, match="prompt ids"):
        t.update([5], [1.0, 0.0], 2)
    with pytest.raises(ValueError, match="local_clock"):
        BetaTracker(2, local_clock="hours")


def test_thompson_prefers_middle_difficulty():
    # prompt 0 ~ Beta(2, 8) (mostly fails), 1 ~ Beta(5, 5), 2 ~ Beta(8, 2) (mostly passes)
    t = BetaTracker(3, variant="kit", global_decay=1.0, local_decay=1.0)
    t.alpha = torch.tensor([2.0, 5.0, 8.0], dtype=torch.float64)
    t.beta = torch.tensor([8.0, 5.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([t.select(1, g) for _ in range(1000)]), minlength=3)
    # P(middle has the largest p(1-p)) is ~0.6 analytically-by-simulation; extremes share the rest
    assert counts[1] > 500, counts
    assert counts[1] > 2 * max(counts[0], counts[2]), counts
    # and it does explore: the uncertain extremes still get picked sometimes
    assert counts[0] > 25 and counts[2] > 25, counts


def test_confident_extremes_are_never_chosen_over_middle():
    t = BetaTracker(3)
    t.alpha = torch.tensor([1.0, 40.0, 200.0], dtype=torch.float64)
    t.beta = torch.tensor([200.0, 40.0, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    picks = [int(t.select(1, g)) for _ in range(300)]
    assert picks.count(1) == 300


def test_select_distinct_candidates_and_global_rng_untouched():
    t = BetaTracker(10, seed=4)
    state = torch.get_rng_state()
    ids = t.select(6, candidates=[1, 3, 5, 7, 9, 0])
    assert sorted(ids.tolist()) == [0, 1, 3, 5, 7, 9]
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="cannot select"):
        t.select(11)


def test_state_round_trip_gives_same_next_selection():
    t = BetaTracker(20, global_decay=0.9, local_decay=0.7, seed=7)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = t.select(4)
        t.update(ids, torch.bernoulli(torch.full((16,), 0.5), generator=g), 4)
        t.step()
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    expected = [t.select(4).tolist() for _ in range(3)]
    buf.seek(0)
    restored = BetaTracker.from_state_dict(torch.load(buf))
    assert [restored.select(4).tolist() for _ in range(3)] == expected
    assert torch.equal(restored.alpha, t.alpha) and restored.step_count == 5
    assert restored.global_decay == 0.9 and restored.local_decay == 0.7
    with pytest.raises(ValueError, match="same training prompt set"):
        BetaTracker(3).load_state_dict(t.state_dict())


# ------------------------------------------------------------------------------- the paper's form
def with_counts(n, counts, **kw):
    """A paper-default tracker whose pseudo-counts (a, b) are set (posterior Beta(a + 1, b + 1))."""
    t = BetaTracker(n, **kw)
    t.alpha = torch.tensor([1 + a for a, _ in counts], dtype=torch.float64)
    t.beta = torch.tensor([1 + b for _, b in counts], dtype=torch.float64)
    return t


def test_paper_worked_example_from_the_method_figure():
    """VADE-RL.github.io asset/main_framework.png, G = 8: two selected samples, one unselected."""
    t = with_counts(3, [(0.1, 8.4), (2.7, 5.3), (9.0, 0.2)])
    assert (t.local_decay, t.global_decay, t.criterion, t.decay_scope) == (0.2, 0.999, "infogain", "unselected")
    one_of_8 = [1, 0, 0, 0, 0, 0, 0, 0]
    four_of_8 = [1, 1, 0, 1, 0, 0, 1, 0]
    t.update([0, 1], one_of_8 + four_of_8, group_size=8)
    t.step()
    a, b = t.counts()
    assert (float(a[0]), float(b[0])) == pytest.approx((1.02, 8.68))      # 0.2*0.1 + 1, 0.2*8.4 + 7
    assert (float(a[1]), float(b[1])) == pytest.approx((4.54, 5.06))      # 0.2*2.7 + 4, 0.2*5.3 + 4
    assert (float(a[2]), float(b[2])) == pytest.approx((8.991, 0.1998))   # 0.999 * (9.0, 0.2)


def test_counts_start_at_zero_so_the_first_draw_is_uniform():
    t = BetaTracker(4)
    a, b = t.counts()
    assert a.tolist() == [0.0] * 4 and b.tolist() == [0.0] * 4
    assert t.alpha.tolist() == [1.0] * 4 and t.beta.tolist() == [1.0] * 4   # Beta(0 + 1, 0 + 1)


def test_info_gain_peaks_at_one_third_with_value_4_over_27():
    res = optimize.minimize_scalar(lambda p: -p * (1 - p) ** 2, bounds=(0, 1), method="bounded")
    assert res.x == pytest.approx(1 / 3, abs=1e-5)
    grid = torch.linspace(0, 1, 30001, dtype=torch.float64)
    s = info_gain(grid, "infogain")
    assert float(grid[s.argmax()]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(s.max()) == pytest.approx(4 / 27, rel=1e-8)
    assert float(info_gain(torch.tensor(1 / 3, dtype=torch.float64))) == pytest.approx(4 / 27)
    # the figure's three draws: I(0.13) ~ 0.10, I(0.32) ~ 0.15, I(0.90) ~ 0.01
    assert info_gain(torch.tensor([0.13, 0.32, 0.90])).tolist() == pytest.approx([0.0985, 0.1479, 0.009], abs=5e-4)
    # asymmetric, unlike p(1-p): p = 0.25 outranks p = 0.75
    assert float(info_gain(torch.tensor(0.25))) > float(info_gain(torch.tensor(0.75)))
    assert float(info_gain(torch.tensor(0.25), "variance")) == float(info_gain(torch.tensor(0.75), "variance"))


def test_fast_and_slow_decays_are_exclusive():
    """Paper: a prompt updated this step gets only l1, the others only l2; the kit scope decays both."""
    for scope, expect_selected in (("unselected", (0.5 * 4 + 2, 0.5 * 4 + 2)),
                                   ("all", (0.9 * (0.5 * 4 + 2), 0.9 * (0.5 * 4 + 2)))):
        t = with_counts(2, [(4.0, 4.0), (4.0, 4.0)], local_decay=0.5, global_decay=0.9, decay_scope=scope)
        t.update([0], [1, 1, 0, 0], group_size=4)
        t.step()
        a, b = t.counts()
        assert (float(a[0]), float(b[0])) == pytest.approx(expect_selected), scope
        assert (float(a[1]), float(b[1])) == pytest.approx((3.6, 3.6)), scope          # 0.9 * 4 only
        t.step()  # next step prompt 0 was not selected: now it gets the slow decay, once
        assert float(t.counts()[0][0]) == pytest.approx(0.9 * expect_selected[0]), scope


def test_paper_tracker_state_round_trips_mid_step():
    """The updated-this-step mask is state: a tracker saved between update and step() decays the same."""
    t = BetaTracker(6, seed=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = t.select(2)
        t.update(ids, torch.bernoulli(torch.full((8,), 0.4), generator=g), 4)
        t.step()
    t.update([5], [1, 0, 1, 1], 4)
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    r = BetaTracker.from_state_dict(torch.load(buf))
    t.step()
    r.step()
    assert torch.equal(r.alpha, t.alpha) and torch.equal(r.beta, t.beta)
    assert r.config() == t.config() and r.select(3).tolist() == t.select(3).tolist()


def test_variants_resolve_and_explicit_keywords_win():
    assert BetaTracker(2, variant="p1p").criterion == "variance"
    assert BetaTracker(2, variant="greedy").draw == "mean"
    assert BetaTracker(2, variant="last_update").local_decay == 0.0
    kit = BetaTracker(2, variant="kit")
    assert (kit.criterion, kit.local_decay, kit.global_decay, kit.decay_scope) == ("variance", 0.8, 0.99, "all")
    assert BetaTracker(2, variant="greedy", draw="thompson").draw == "thompson"
    assert set(VARIANTS) == {"paper", "p1p", "greedy", "last_update", "kit"}
    with pytest.raises(ValueError, match="variant"):
        BetaTracker(2, variant="fancy")
    with pytest.raises(ValueError, match="local_decay"):
        BetaTracker(2, local_decay=1.5)


def test_p1p_variant_ranks_differently_from_the_paper_score():
    # confident posteriors at p = 0.25 (prompt 0) and p = 0.6 (prompt 1)
    counts = [(500.0, 1500.0), (1200.0, 800.0)]
    paper = with_counts(2, counts)
    p1p = with_counts(2, counts, variant="p1p")
    assert [int(paper.select(1)) for _ in range(50)] == [0] * 50    # 0.25 * 0.75^2 > 0.6 * 0.4^2
    assert [int(p1p.select(1)) for _ in range(50)] == [1] * 50      # 0.25 * 0.75 < 0.6 * 0.4


def test_greedy_variant_ranks_by_posterior_mean_without_a_draw():
    # prompt 0: confident at p = 0.3 (I = 0.147); prompt 1: no evidence, mean 0.5 (I = 0.125) but wide
    counts = [(300.0, 700.0), (0.0, 0.0)]
    greedy = with_counts(2, counts, variant="greedy")
    assert [int(greedy.select(1, torch.Generator().manual_seed(s))) for s in range(40)] == [0] * 40
    state = greedy.generator.get_state()
    greedy.select(1)
    assert torch.equal(state, greedy.generator.get_state())   # no draw consumed
    thompson = with_counts(2, counts)
    picks = [int(thompson.select(1)) for _ in range(400)]
    assert 20 < picks.count(1) < 380                          # the wide posterior wins some draws


def test_last_update_variant_keeps_only_the_newest_group():
    t = BetaTracker(1, variant="last_update")
    t.update([0], [1, 1, 1, 1], 4)
    t.step()
    t.update([0], [0, 0, 0, 1], 4)
    a, b = t.counts()
    assert (float(a[0]), float(b[0])) == (1.0, 3.0)
    paper = BetaTracker(1)
    paper.update([0], [1, 1, 1, 1], 4)
    paper.step()
    paper.update([0], [0, 0, 0, 1], 4)
    assert float(paper.counts()[0][0]) == pytest.approx(0.2 * 4 + 1)


def test_collect_does_not_clamp_out_of_range_rewards():
    s = make_sampler("vade", 4, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.collect(2, lambda ids: (torch.tensor([[1.5, 0.0]] * len(ids)), [None] * len(ids)))
