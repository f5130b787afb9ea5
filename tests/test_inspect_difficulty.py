"""The difficulty inspector shows what VADE decided: the step's draws on I(p) = p(1-p)^2 with the selected
prompts ringed, and the effective-gradient ratio per sampler, from a run's difficulty.parquet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfkit.data.samplers import difficulty_rows, make_sampler
from pfkit.inspect import difficulty as D
from pfkit.runs import RunDir


def sampler_run(path, steps=5, n=10, k=3, G=4):
    """difficulty.parquet written by the real samplers (vade and uniform) on fixed success rates."""
    run = RunDir(path)
    p = torch.linspace(0.05, 0.95, n)
    for name in ("vade", "uniform"):
        s = make_sampler(name, n, G, seed=1)
        g = torch.Generator().manual_seed(3)
        for step in range(steps):
            b = s.collect(k, lambda ids, g=g: (torch.bernoulli(p[ids].unsqueeze(1).expand(len(ids), G), generator=g),
                                               [None] * len(ids)))
            run.append("difficulty", difficulty_rows(s, b, step, names=[f"t{i}" for i in range(n)]), step=step)
    return run


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
