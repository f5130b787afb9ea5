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
                            "draw", "sampler"}
    assert all(0.0 <= r["draw"] <= 1.0 for r in rows)   # every prompt was a candidate of vade's draw
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


# ------------------------------------------------------------------------------------ GRESO / MoPPS
def test_greso_skip_probability_grows_with_the_streak():
    s = make_sampler("greso", 4, 4, seed=0, p_easy=0.5, p_hard=0.8)
    s._observe([0, 1, 2], torch.tensor([[1.0] * 4, [0.0] * 4, [1.0, 0, 0, 1]]))
    s._observe([0, 1], torch.tensor([[1.0] * 4, [0.0] * 4]))
    assert s.easy_streak.tolist() == [2, 0, 0, 0] and s.hard_streak.tolist() == [0, 2, 0, 0]
    assert s.skip_probability(0) == pytest.approx(1 - 0.5 ** 2)      # 1 - p_easy^z
    assert s.skip_probability(1) == pytest.approx(1 - 0.8 ** 2)      # 1 - p_hard^z
    assert s.skip_probability(2) == 0.0 and s.skip_probability(3) == 0.0   # mixed / never seen
    s._observe([1], torch.tensor([[0.0, 1, 0, 0]]))                  # a mixed group ends the streak
    assert s.hard_streak[1] == 0 and s.skip_probability(1) == 0.0
    for _ in range(20):
        s._observe([0], torch.ones(1, 4))
    assert s.skip_probability(0) == pytest.approx(0.99)               # capped: 1 - max(p^z, 0.01)


def test_greso_skips_streak_prompts_before_rollout_and_saves_rollouts():
    """P: 12 prompts always zero-variance, 4 mixed. After the first epoch GRESO rolls out far fewer
    zero-variance groups than dapo_filter for the same kept groups."""
    spent, zero = {}, {}
    for name in ("dapo_filter", "greso"):
        s = make_sampler(name, 16, 4, seed=0, max_rounds=20)
        fn, calls = bernoulli_rollout(P, 4, seed=5)
        for _ in range(4):   # first epoch: no streaks yet
            s.collect(2, fn)
        n0 = len(sum(calls, []))
        for _ in range(30):
            s.collect(2, fn)
        later = sum(calls, [])[n0:]
        zero[name] = sum(P[i] != 0.5 for i in later)
        spent[name] = s.rollouts_spent
    assert zero["greso"] < 0.5 * zero["dapo_filter"], zero
    assert spent["greso"] < spent["dapo_filter"], spent


def test_greso_adapts_p_toward_the_target_after_the_first_epoch():
    s = make_sampler("greso", 8, 4, seed=0, filter_zero_variance=False)
    fn, _ = bernoulli_rollout([0.0] * 8, 4)   # every group all-wrong: hard share 1.0 >= target 1/6
    s.collect(8, fn)                           # epoch 0: no adaptation
    assert (s.p_easy, s.p_hard) == (0.5, 0.5)
    s.collect(4, fn)                           # epoch 1 begins
    assert s.epoch == 1
    assert s.p_hard == pytest.approx(0.49) and s.p_easy == pytest.approx(0.51)  # skip more hard, fewer easy


def test_mopps_picks_candidates_whose_draw_is_closest_to_the_target():
    s = make_sampler("mopps", 10, 4, seed=0, top_k_ratio=0.5)
    order = s.order.tolist()
    cand = order[:4]                       # ceil(2 / 0.5) candidates from the uniform stream
    mid = [cand[1], cand[3]]               # confidently at 0.5; every other prompt confidently hopeless
    a = torch.full((10,), 1.0, dtype=torch.float64)
    b = torch.full((10,), 2000.0, dtype=torch.float64)
    a[mid], b[mid] = 500.0, 500.0
    s.tracker.alpha, s.tracker.beta = a.clone(), b.clone()

    def fn(ids):
        return torch.tensor([[1.0, 0, 1, 0]] * len(ids)), [None] * len(ids)

    b1 = s.collect(2, fn)
    assert sorted(b1.prompt_ids) == sorted(mid) and s.pos == 4   # the other two candidates are consumed
    # discounted update on the observed prompts only: alpha <- 0.5 * (alpha - 1) + 1 + successes
    assert s.tracker.alpha[mid].tolist() == pytest.approx([1 + 0.5 * 499 + 2] * 2)
    assert s.tracker.beta[mid].tolist() == pytest.approx([1 + 0.5 * 499 + 2] * 2)
    rest = [j for j in range(10) if j not in mid]
    assert torch.equal(s.tracker.alpha[rest], a[rest]) and torch.equal(s.tracker.beta[rest], b[rest])


def test_mopps_prefers_mid_difficulty_prompts_over_time():
    s = make_sampler("mopps", 16, 8, seed=0)
    fn, _ = bernoulli_rollout(P, 8, seed=2)
    useful = 0
    for _ in range(60):
        b = s.collect(4, fn)
        useful += int((~zero_variance(b.rewards)).sum())
    assert useful > 1.5 * 60 * 4 * 4 / 16, useful   # uniform would get ~1/4 of the groups useful


# ------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_stops_exactly_at_the_rollout_budget(name):
    budget = 4 * 3 * 7 + 4 * 2   # not a multiple of a step: the last step is cut to whole groups
    s = make_sampler(name, 16, 4, seed=0, rollout_budget=budget, max_rounds=20, oversample=1.5)
    fn, _ = bernoulli_rollout(P, 4, seed=1)
    while s.budget_left > 0:
        b = s.collect(3, fn)
        assert b.rollouts <= 3 * 4 * 20
    assert s.rollouts_spent == budget
    assert s.collect(3, fn).rollouts == 0   # spent: nothing more is generated
    with pytest.raises(ValueError, match="multiple of group_size"):
        make_sampler(name, 16, 4, rollout_budget=10)


# -------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init: str, out: str):
    import torch.distributed as tdist

    from pfkit import distributed as dist

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        states = {}
        for name in SAMPLERS:
            s = make_sampler(name, 16, 4, seed=3, max_rounds=4, oversample=1.5)
            g = torch.Generator().manual_seed(100 + rank)   # each rank samples its own share differently

            def fn(ids, g=g):
                probs = torch.tensor([P[i] for i in ids]).unsqueeze(1).expand(len(ids), 4)
                return torch.bernoulli(probs, generator=g), [i for i in ids]

            for _ in range(6):
                s.collect(3, lambda ids, fn=fn: dist.sharded_rollout(ids, fn, 4))
            states[name] = s.state_dict()
        torch.save(states, f"{out}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_every_sampler_state_is_identical_across_two_gloo_ranks(tmp_path):
    """Two processes, each rolling out its round-robin share with its own RNG: the gathered rewards drive
    every sampler to the same state on both ranks (tracker, shuffle, GRESO streaks, RNG)."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(_ddp_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    def same(x, y, where):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), where
        else:
            assert x == y, where

    for name in SAMPLERS:
        same(a[name], b[name], name)
        assert a[name]["rollouts_spent"] > 0 and int(a[name]["tracker"]["visits"].sum()) > 0


def test_difficulty_rows_record_the_draw_each_prompt_was_ranked_on():
    import math

    from pfkit.rl.vade import info_gain

    s = make_sampler("vade", 6, 4, seed=2)
    fn, _ = bernoulli_rollout([0.5] * 6, 4)
    s.collect(2, fn)
    state = s.tracker.generator.get_state()
    b = s.collect(3, fn)
    rows = difficulty_rows(s, b, step=1)
    draws = torch.tensor([r["draw"] for r in rows], dtype=torch.float64)
    chosen = torch.topk(info_gain(draws), 3).indices.tolist()
    assert sorted(chosen) == sorted(b.prompt_ids)            # the logged draws are the ones ranked on
    assert torch.equal(state, s.tracker.generator.get_state())
    u = make_sampler("uniform", 6, 4)
    bu = u.collect(2, fn)
    assert all(math.isnan(r["draw"]) for r in difficulty_rows(u, bu, step=0))
