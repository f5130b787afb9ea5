"""pfkit.data.samplers: uniform, dapo_filter, vade on a synthetic rollout function."""

import pytest
import torch

from pfkit.data.samplers import SAMPLERS, difficulty_rows, make_sampler, zero_variance


def bernoulli_rollout(p, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    calls = []

    def fn(ids):
        calls.append(list(ids))
        probs = torch.tensor([p[i] for i in ids]).unsqueeze(1).expand(len(ids), group_size)
        return torch.bernoulli(probs, generator=g), [f"payload-{i}" for i in ids]

    return fn, calls


P = [0.0] * 6 + [1.0] * 6 + [0.5] * 4   # 12 prompts that can never give a useful group, 4 that can


def test_zero_variance():
    r = torch.tensor([[1, 1, 1], [0, 0, 0], [0, 1, 0], [0.5, 0.5, 0.5]])
    assert zero_variance(r).tolist() == [True, True, False, True]


def test_uniform_is_an_epoch_shuffle():
    s = make_sampler("uniform", 16, 4, seed=0)
    fn, calls = bernoulli_rollout(P, 4)
    seen = []
    for _ in range(4):
        b = s.collect(4, fn)
        assert len(b.prompt_ids) == 4 and b.rollouts == 16 and b.dropped == 0
        assert b.payload == [f"payload-{i}" for i in b.prompt_ids]
        seen += b.prompt_ids
    assert sorted(seen) == list(range(16))
    assert s.rollouts_spent == 64 and s.tracker.step_count == 4


def test_dapo_filter_never_returns_zero_variance_and_counts_rollouts():
    s = make_sampler("dapo_filter", 16, 4, seed=1, max_rounds=20)
    fn, calls = bernoulli_rollout(P, 4, seed=1)
    total = 0
    for _ in range(30):
        b = s.collect(2, fn)
        assert not zero_variance(b.rewards).any()
        assert len(b.prompt_ids) <= 2
        assert all(P[i] == 0.5 for i in b.prompt_ids)
        assert b.rollouts == 4 * len(b.generated_ids) == 4 * sum(len(c) for c in calls[-b.rounds:])
        total += b.rollouts
    assert s.rollouts_spent == total
    assert total > 30 * 2 * 4  # the filter paid for dropped groups


def test_dapo_filter_gives_up_after_max_rounds():
    s = make_sampler("dapo_filter", 12, 4, seed=0, max_rounds=3)
    fn, calls = bernoulli_rollout([0.0] * 12, 4)
    b = s.collect(4, fn)
    assert b.prompt_ids == [] and b.rewards.shape == (0, 4) and b.rounds == 3 and b.rollouts == 48


def test_vade_spends_fewer_wasted_groups_than_uniform():
    """After a short warm-up the posteriors steer VADE to the informative prompts."""
    useful = {}
    for name in ("uniform", "vade"):
        s = make_sampler(name, 16, 8, seed=0, tracker={"global_decay": 1.0, "local_decay": 1.0})
        fn, _ = bernoulli_rollout(P, 8, seed=2)
        n_useful = 0
        for _ in range(40):
            b = s.collect(4, fn)
            n_useful += int((~zero_variance(b.rewards)).sum())
        useful[name] = n_useful
    assert useful["uniform"] == pytest.approx(40 * 4 * 4 / 16, rel=0.35)
    assert useful["vade"] > 3 * useful["uniform"], useful


def test_sampler_state_round_trip_same_next_batch():
    for name in SAMPLERS:
        s = make_sampler(name, 16, 4, seed=3)
        fn, _ = bernoulli_rollout(P, 4, seed=3)
        for _ in range(3):
            s.collect(3, fn)
        state = s.state_dict()
        fn_a, calls_a = bernoulli_rollout(P, 4, seed=9)
        a = s.collect(3, fn_a)
        s2 = make_sampler(name, 16, 4, seed=123)
        s2.load_state_dict(state)
        fn_b, calls_b = bernoulli_rollout(P, 4, seed=9)
        b = s2.collect(3, fn_b)
        assert calls_a == calls_b and a.prompt_ids == b.prompt_ids, name
        assert s2.rollouts_spent == s.rollouts_spent
    with pytest.raises(ValueError, match="same sampler"):
        make_sampler("vade", 16, 4).load_state_dict(make_sampler("uniform", 16, 4).state_dict())


def test_difficulty_rows_contract():
    s = make_sampler("vade", 5, 4, seed=0, tracker={"global_decay": 1.0, "local_decay": 1.0})
    fn, _ = bernoulli_rollout([1.0, 0.0, 1.0, 0.0, 1.0], 4)
    b = s.collect(2, fn)
    rows = difficulty_rows(s, b, step=7, names=[f"t{i}" for i in range(5)])
    assert len(rows) == 5
    assert set(rows[0]) == {"step", "prompt_id", "alpha", "beta", "p_mean", "selected", "successes", "trials",
                            "sampler"}
    by = {r["prompt_id"]: r for r in rows}
    for i in b.prompt_ids:
        r = by[f"t{i}"]
        assert r["selected"] and r["trials"] == 4.0
        assert r["successes"] == 4.0 * [1, 0, 1, 0, 1][i]
        assert r["alpha"] == 1 + r["successes"] and r["beta"] == 1 + 4 - r["successes"]
    assert sum(r["selected"] for r in rows) == 2 and all(r["sampler"] == "vade" for r in rows)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("random", 4, 4)
    with pytest.raises(ValueError, match="group_size"):
        make_sampler("uniform", 4, 1)
    with pytest.raises(ValueError, match="cannot draw"):
        make_sampler("uniform", 4, 2).collect(5, lambda ids: (torch.zeros(len(ids), 2), [None] * len(ids)))
