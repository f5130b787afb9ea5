"""The difficulty inspector shows what VADE decided: the step's draws on I(p) = p(1-p)^2 with the selected
prompts ringed, and the effective-gradient ratio per sampler, from a run's difficulty.parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _inspect_runs import difficulty_run, sampler_run

from pfkit.inspect import _common as C
from pfkit.inspect import difficulty as D
from pfkit.runs import RunDir


def test_effective_ratio_is_the_mixed_share_of_selected_groups(tmp_path):
    sampler_run(tmp_path)
    data = D.Difficulty(tmp_path)
    er = data.effective_ratio()
    raw = data.raw
    for (sampler, step), g in raw[raw.selected].groupby(["sampler", "step"]):
        mixed = ((g.successes > 0) & (g.successes < g.trials)).mean()
        row = er[(er.sampler == sampler) & (er.step == step)]
        assert float(row.ratio.iloc[0]) == pytest.approx(mixed) and int(row.groups.iloc[0]) == 3
    fig = D.effective_ratio_figure(data)
    assert {ln.get_label() for ln in fig.axes[0].lines} == {"uniform", "vade"}


def test_infogain_figure_rings_the_selected_draws(tmp_path):
    sampler_run(tmp_path)
    data = D.Difficulty(tmp_path)
    d = data.at("vade", 4)
    assert d["draw"].notna().all()
    fig = D.infogain_figure(data, "vade", 4)
    ax = fig.axes[0]
    rings = np.asarray(ax.collections[1].get_offsets())
    sel = d[d.selected]
    x = sel["draw"].to_numpy()
    np.testing.assert_allclose(sorted(rings[:, 0]), sorted(x))
    np.testing.assert_allclose(sorted(rings[:, 1]), sorted(x * (1 - x) ** 2))
    # VADE took the top-3 information gains of its draws
    gain = d["draw"] * (1 - d["draw"]) ** 2
    assert set(d.loc[gain.nlargest(3).index, "pid"]) == set(sel["pid"])
    # uniform logs no draws: the figure falls back to posterior means and says so
    fig_u = D.infogain_figure(data, "uniform", 4)
    assert "posterior mean" in fig_u.axes[0].get_xlabel()
    assert D.build_app(tmp_path) is not None


def _expected_decision(d: pd.DataFrame, score) -> dict:
    """The step's decision from the parquet rows with numpy: candidates = rows with a draw."""
    c = d[d["draw"].notna()]
    x = c["draw"].to_numpy()
    sc = score(x)
    sel = c["selected"].to_numpy()
    k = int(sel.sum())
    top = set(c["prompt_id"].to_numpy()[np.argsort(-sc, kind="stable")[:k]])
    return {"candidates": len(c), "k": k, "agree": len(top & set(c.loc[c.selected, "prompt_id"])),
            "min_sel": sc[sel].min(), "max_unsel": sc[~sel].max(), "mean_x": x[sel].mean(),
            "mean_sel": sc[sel].mean(), "mean_all": sc.mean()}


def test_decision_numbers_match_numpy_and_follow_the_config(tmp_path):
    """VADE's step decision: 3 of 3 top-scoring draws selected (the paper's criterion by default); a run whose
    config.yaml sets the p1p variant is scored by p(1-p); MoPPS by closeness to its target rate."""
    sampler_run(tmp_path / "a")
    data = D.Difficulty(tmp_path / "a")
    raw = pd.read_parquet(tmp_path / "a" / "difficulty.parquet")
    for step in range(5):
        d = raw[(raw.sampler == "vade") & (raw.step == step)]
        e = _expected_decision(d, lambda x: x * (1 - x) ** 2)
        dc = D.decision(data, "vade", step)
        assert (dc["candidates"], dc["k"], dc["top_k_agree"]) == (e["candidates"], 3, 3) == (10, 3, e["agree"])
        for key, want in (("min_selected", "min_sel"), ("max_unselected", "max_unsel"),
                          ("mean_x_selected", "mean_x"), ("mean_score_selected", "mean_sel"),
                          ("mean_score_all", "mean_all")):
            assert dc[key] == pytest.approx(e[want])
        assert dc["min_selected"] >= dc["max_unselected"]  # top-k: the cut separates them
    md = D.decision_markdown(data, "vade", 4)
    assert "I(p) = p(1−p)² (VADE)** (the sampler's default)" in md and "**3 of 3**" in md
    assert "Scoring curve: none" in D.decision_markdown(data, "uniform", 4)

    sampler_run(tmp_path / "b", samplers=("vade",), options={"vade": {"tracker": {"variant": "p1p"}}},
                config={"sampler": "vade", "group_size": 4, "sampler_options": {"tracker": {"variant": "p1p"}}})
    data = D.Difficulty(tmp_path / "b")
    raw = pd.read_parquet(tmp_path / "b" / "difficulty.parquet")
    d = raw[raw.step == 3]
    e = _expected_decision(d, lambda x: x * (1 - x))
    dc = D.decision(data, "vade", 3)
    assert dc["scoring"].criterion == "variance" and dc["scoring"].source == "config.yaml"
    assert dc["top_k_agree"] == e["agree"] == 3 and dc["min_selected"] == pytest.approx(e["min_sel"])
    assert "**p(1−p)** (from the run's config.yaml)" in D.decision_markdown(data, "vade", 3)

    sampler_run(tmp_path / "c", samplers=("mopps",), options={"mopps": {"target_success_rate": 0.3}},
                config={"sampler": "mopps", "sampler_options": {"target_success_rate": 0.3}})
    data = D.Difficulty(tmp_path / "c")
    raw = pd.read_parquet(tmp_path / "c" / "difficulty.parquet")
    d = raw[raw.step == 2]
    e = _expected_decision(d, lambda x: -(x - 0.3) ** 2)
    dc = D.decision(data, "mopps", 2)
    assert dc["scoring"].target == 0.3 and dc["candidates"] == e["candidates"] < 10  # ceil(3 / 0.6) = 5
    assert dc["top_k_agree"] == e["agree"] == 3 and dc["mean_score_all"] == pytest.approx(e["mean_all"])


def test_effective_table_matches_pandas(tmp_path):
    sampler_run(tmp_path)
    raw = pd.read_parquet(tmp_path / "difficulty.parquet")
    t = D.effective_table(D.Difficulty(tmp_path))
    assert list(t.columns) == ["step", "uniform", "uniform groups", "vade", "vade groups"]
    assert t["step"].tolist() == list(range(5))
    for r in t.to_dict("records"):
        for s in ("uniform", "vade"):
            g = raw[(raw.sampler == s) & (raw.step == r["step"]) & raw.selected & (raw.trials > 0)]
            mixed = ((g.successes > 0) & (g.successes < g.trials)).mean()
            assert r[s] == pytest.approx(round(mixed, 4)) and r[f"{s} groups"] == len(g) == 3


# ------------------------------------------------------------------ issue #20: rollouts across the run
def test_search_focus_and_csv_match_pandas_and_scipy(tmp_path):
    from _inspect_runs import difficulty_run
    from scipy import stats

    from pfkit.inspect import _common as C

    difficulty_run(tmp_path, steps=6, prompts=8, samplers=("vade",), rollouts=True, texts=True, hack=True)
    ro = pd.read_parquet(tmp_path / "rollouts.parquet")
    raw = pd.read_parquet(tmp_path / "difficulty.parquet")
    data = D.Difficulty(tmp_path)
    found = data.search(D.Query(text=r"t[35] j", regex=True, reward=(0.5, None), passed="passed", hack="clean"))
    want = ro[ro.response.str.contains(r"t[35] j") & (ro.reward >= 0.5) & (ro.score >= 1) & (ro.hack == "")]
    assert len(found) == len(want) > 0
    assert sorted(zip(found.step, found.prompt_id, found.sample_idx)) == sorted(zip(want.step, want.prompt_id,
                                                                                    want.sample_idx))
    csv = D.csv_frame(found)
    assert list(csv.columns[:5]) == ["step", "prompt_id", "sample_idx", "prompt", "response"] and len(csv) == len(want)
    with pytest.raises(C.BadQuery, match="invalid regular expression"):
        data.search(D.Query(text="(", regex=True))
    with pytest.raises(C.BadQuery, match="min 2 is above max 1"):
        data.search(D.Query(reward=(2, 1)))

    h = data.history("vade", "task/3")
    mine = raw[raw.prompt_id == "task/3"].sort_values("step")
    assert h.step.tolist() == mine.step.tolist() and h.selected.tolist() == mine.selected.tolist()
    np.testing.assert_allclose(h.ci_low, stats.beta(mine.alpha, mine.beta).ppf(0.025))
    np.testing.assert_allclose(h.ci_high, stats.beta(mine.alpha, mine.beta).ppf(0.975))
    md = D.focus_markdown(data, "vade", 4, "task/3")
    row = mine[mine.step == 4].iloc[0]
    assert f"posterior mean p = **{C.fmt(row.alpha / (row.alpha + row.beta))}**" in md
    assert f"observed success rate **{C.fmt(mine.successes.sum() / mine.trials.sum())}**" in md
    r3 = ro[ro.prompt_id == "task/3"]
    assert f"Logged rollouts: **{len(r3)}** over {r3.step.nunique()} steps" in md
    prompt, texts, ids = D.focus_texts(data, "vade", 4, "task/3")
    at4 = r3[r3.step == 4]
    assert ids == at4.sample_idx.tolist() and all(r in texts for r in at4.response.str.rstrip())
    assert D.focus_tokens(data, "vade", 4, "task/3", 0, "log-prob (policy)")[1].startswith("Per-token log-probs: not logged")
    fig = D.focus_figure(data, "vade", "task/3", 4)
    dots = fig.axes[0].lines[1]  # the selected steps
    assert list(dots.get_xdata()) == mine.loc[mine.selected, "step"].tolist()


def _grpo_step(path, **kw):
    """One GRPO step of a tiny policy on a verifier task, its tables written to ``path`` as the module writes
    them; (module, step result, the policy before the update, tokenizer, rollouts.parquet)."""
    import copy
    from types import SimpleNamespace

    from pfkit.data.prompts import verifier_prompt_set
    from pfkit.models import build_policy, train_tokenizer
    from pfkit.modules.grpo import GRPOModule
    from pfkit.rl import grpo

    torch.set_num_threads(1)
    prompts = [f"count {i}:" for i in range(8)]
    torch.manual_seed(0)
    tok = train_tokenizer(prompts * 5 + ["0123456789 abcdef " * 5], vocab_size=300)
    m = GRPOModule(policy=None, sampler="uniform", prompts_per_step=2, group_size=3, max_new_tokens=6, lr=1e-2, **kw)
    m.set_policy(build_policy(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64), tok)
    m.attach(verifier_prompt_set(prompts, lambda p, c: float(any(ch.isdigit() for ch in c[:3]))))
    if m.ref_model is not None:  # a reference that differs from the policy, so the two columns differ
        with torch.no_grad():
            for q in m.ref_model.parameters():
                q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    before = copy.deepcopy(m.model)
    res = grpo.step(m.model, m.configure_optimizers(), m.sampler, m.rollout, m.config, ref_policy=m.ref_model,
                    generator=m.gen)
    m._last_batch, m._last_adv = res.batch, res.advantages
    m._trainer = SimpleNamespace(log_dir=str(path), default_root_dir=str(path))
    m._write_tables(0)
    return m, res, before, tok, RunDir(path).read("rollouts")


def test_grpo_rollouts_carry_tokens_and_policy_logprobs(tmp_path):
    """GRPO's rollouts.parquet: each response's tokens and log-probs under the sampling policy (recomputed
    here with sequence_logprobs on a copy of the policy taken before the update), shown by the app."""
    from pfkit.rollout import Rollout, sequence_logprobs

    m, res, before, tok, ro = _grpo_step(tmp_path)
    assert len(ro) == 6 and {"tokens", "token_logprobs"} <= set(ro.columns)
    assert "ref_token_logprobs" not in ro.columns  # no KL term, no reference
    d = Rollout.cat(list(res.batch.payload))
    with torch.no_grad():
        full = sequence_logprobs(before, d.sequences, d.attention_mask, d.response_len)
    for i, row in enumerate(ro.itertuples()):
        on = d.response_mask[i].bool()
        assert len(row.tokens) == len(row.token_logprobs) == int(on.sum())
        assert list(row.tokens) == [tok.decode([t]) for t in d.response_ids[i][on].tolist()]
        np.testing.assert_allclose(row.token_logprobs, full[i][on].numpy(), atol=1e-4)
    data = D.Difficulty(tmp_path)  # the app renders them (the module logs difficulty.parquet beside them)
    pid = str(ro.prompt_id.iloc[0])
    html, info = D.focus_tokens(data, "uniform", 0, pid, 0, "log-prob (policy)")
    assert html.count('class="pfkit-tok"') == len(ro.tokens.iloc[0]) and "tokens · sum log p" in info


def test_grpo_with_kl_logs_reference_logprobs(tmp_path):
    """With kl_coef > 0 GRPO has a reference; rollouts.parquet then also carries its per-token log-probs
    (recomputed here with sequence_logprobs on the reference) and the app shades policy − reference."""
    from pfkit.inspect.filtration import TOKEN_MODES
    from pfkit.rollout import Rollout, sequence_logprobs

    m, res, before, tok, ro = _grpo_step(tmp_path, kl_coef=0.1)
    d = Rollout.cat(list(res.batch.payload))
    with torch.no_grad():
        ref = sequence_logprobs(m.ref_model, d.sequences, d.attention_mask, d.response_len)
    for i, row in enumerate(ro.itertuples()):
        on = d.response_mask[i].bool()
        np.testing.assert_allclose(row.ref_token_logprobs, ref[i][on].numpy(), atol=1e-4)
        assert not np.allclose(row.ref_token_logprobs, row.token_logprobs, atol=1e-3)
    data = D.Difficulty(tmp_path)
    assert data.has_ref
    row = ro.iloc[0]
    html, info = D.focus_tokens(data, "uniform", 0, str(row.prompt_id), int(row.sample_idx), TOKEN_MODES[1])
    diff = np.asarray(row.token_logprobs) - np.asarray(row.ref_token_logprobs)
    assert f"mean (log p − log p_ref) = **{diff.mean():.3f}**" in info and html.count('class="pfkit-tok"') == len(diff)


def test_figures_are_drawn_once_per_view_and_posteriors_match_scipy(tmp_path):
    """The page-load fix (issue #20): a figure is drawn and encoded once per (figure, arguments) and sent
    from the cache after; the posterior density drawn without scipy.stats equals scipy.stats.beta.pdf."""
    from scipy import stats

    difficulty_run(tmp_path, steps=4, prompts=6, samplers=("vade",))
    data = D.Difficulty(tmp_path)
    ps = data.default_prompts("vade", 3)
    first = D._plot(data, "posterior", "vade", 3, ps)
    assert first.plot.startswith("data:image/webp;base64,") and data.plots.misses == 1
    assert D._plot(data, "posterior", "vade", 3, list(ps)) is first and data.plots.misses == 1
    D._plot(data, "posterior", "vade", 2, ps)
    assert data.plots.misses == 2
    x = np.linspace(0.001, 0.999, 50)
    for a, b in ((1.0, 1.0), (2.5, 7.0), (30.0, 3.0)):
        assert np.allclose(D.beta_pdf(x, a, b), stats.beta.pdf(x, a, b), rtol=1e-10)
    line = D.posterior_figure(data, "vade", 3, ps).axes[0].lines[0]
    row = data.at("vade", 3).set_index("pid").loc[ps[0]]
    assert np.allclose(line.get_ydata(), stats.beta.pdf(line.get_xdata(), row.alpha, row.beta), rtol=1e-10)
    cache = C.PlotCache(size=2)
    for k in range(3):
        cache(k, lambda: C.empty_figure("x"))
    assert cache.misses == 3 and list(cache._d) == [1, 2]  # the least recent went out
