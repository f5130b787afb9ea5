"""Inspectors without a browser: their numbers against independent numpy/torch, bad input, CLI, speed."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
from _inspect_runs import (
    APPS_10K,
    RENDER_10K,
    difficulty_run,
    filtration_run,
    filtration_run_wide_views,
    noisemask_run,
    run_10k,
)

from pfkit.inspect import _common as C
from pfkit.inspect import difficulty as D
from pfkit.inspect import filtration as F
from pfkit.inspect import noisemask as N
from pfkit.runs import RunDir

APPS = {"filtration": F, "difficulty": D, "noisemask": N}


def r2(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def expected_kept(frame: pd.DataFrame, strategy: str) -> np.ndarray:
    """Per prompt, by hand: none = all, bon = the top reward, bw = the top and the bottom."""
    out = np.zeros(len(frame), bool)
    for _, g in frame.groupby("prompt_id"):
        r = g["reward"].to_numpy()
        pos = frame.index.get_indexer(g.index)
        if strategy == "none":
            out[pos] = True
        else:
            out[pos[np.argmax(r)]] = True
            if strategy == "bw":
                out[pos[np.argmin(r)]] = True
    return out


# ------------------------------------------------------------------------------------------ filtration
def test_filtration_strategies_and_r2_match_numpy(tmp_path):
    filtration_run(tmp_path, steps=3, prompts=4, n=5)
    raw = pd.read_parquet(tmp_path / "rollouts.parquet").sort_values(["step", "prompt_id", "sample_idx"])
    data = F.Rollouts(tmp_path)
    assert data.steps == [0, 1, 2]
    for step, frame in raw.groupby("step"):
        frame = frame.reset_index(drop=True)
        r, s = frame["reward"].to_numpy(), frame["score"].to_numpy()
        assert (data.kept(step, "logged") == frame["kept"].to_numpy()).all()
        for strategy in ("none", "bon", "bw"):
            want = expected_kept(frame, strategy)
            assert (data.kept(step, strategy) == want).all(), (step, strategy)
            st = data.step_stats(step, strategy)
            assert st["n_kept"] == want.sum()
            assert st["r2_all"] == pytest.approx(r2(r, s))
            if np.ptp(s[want]) > 0:
                assert st["r2_kept"] == pytest.approx(r2(r[want], s[want]))
            else:  # every kept sample has the same score: no line to fit, shown as n/a
                assert np.isnan(st["r2_kept"])
        assert data.step_stats(step, "logged")["pass_rate"] == pytest.approx((s >= 1).mean())
        # best-random: the best of each prompt plus one random other, reproducible by seed
        br = data.kept(step, "br", seed=3)
        top = expected_kept(frame, "bon")
        assert (br[top]).all() and br.sum() == 2 * frame["prompt_id"].nunique()
        assert (data.kept(step, "br", seed=3) == br).all()
    draws = {tuple(data.kept(s, "br", seed=k)) for s in data.steps for k in range(6)}
    assert len(draws) > 3  # the seed changes the random pick


def test_filtration_summary_table_and_curves(tmp_path):
    filtration_run(tmp_path, steps=2, prompts=3, n=4)
    data = F.Rollouts(tmp_path)
    raw = pd.read_parquet(tmp_path / "rollouts.parquet")
    g = raw[(raw.step == 1) & (raw.prompt_id == 7)].sort_values("sample_idx")
    kept = ", ".join(str(i) for i in g.loc[g.kept, "sample_idx"])
    md = F.summary_markdown(data, 1, "7", "bw", 0, None)
    assert f"kept (logged): **{kept}**" in md and "strategy **bw** would keep" in md
    t = F.sample_table(data, 1, "7", "bw", 0)
    assert list(t["sample_idx"]) == list(g["sample_idx"]) and list(t["kept"]) == list(g["kept"])
    assert t["reward_rank"].tolist() == (-g["reward"]).rank().astype(int).tolist()
    cur = data.curves("bon")
    assert list(cur["step"]) == [0, 1] and cur["pass_rate"].between(0, 1).all()
    # paper form of R²: bins>=2 groups the samples by reward first (differs from per-sample R²)
    st_b = data.step_stats(1, "none", bins=3)
    assert 0 <= st_b["r2_all"] <= 1


# ------------------------------------------------------------------------------------------ difficulty
def test_difficulty_views_match_numpy(tmp_path):
    difficulty_run(tmp_path, steps=6, prompts=8, samplers=("vade", "uniform"))
    raw = pd.read_parquet(tmp_path / "difficulty.parquet")
    data = D.Difficulty(tmp_path)
    assert data.samplers == ["uniform", "vade"] and data.steps("vade") == list(range(6))

    v = raw[raw.sampler == "vade"]
    last = v[v.step == 5].copy()
    a, b = last["alpha"].to_numpy(), last["beta"].to_numpy()
    last["sd"] = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    table = data.prompt_table("vade", 5, "most uncertain first (posterior sd)")
    order = last.sort_values(["sd", "prompt_id"], ascending=[False, True])["prompt_id"].tolist()
    assert table["prompt_id"].tolist() == order
    counts = v.groupby("prompt_id")["selected"].sum()
    assert (table.set_index("prompt_id")["times_selected"] == counts.loc[table["prompt_id"]].to_numpy()).all()
    hardest = data.prompt_table("vade", 5, "hardest first (lowest p)")
    assert hardest["p_mean"].is_monotonic_increasing

    zv = data.zero_variance()
    for sampler, d in raw.groupby("sampler"):
        gen = d[d.trials > 0]
        want = ((gen.successes == 0) | (gen.successes == gen.trials)).groupby(gen.step).mean()
        got = zv[(zv.sampler == sampler) & (zv.source.str.startswith("generated"))].set_index("step")["fraction"]
        assert np.allclose(got.loc[want.index], want.to_numpy())
    md = D.stats_markdown(data, "vade", 5)
    sel = v[v.selected]
    assert f"**{C.fmt((sel.p_mean - 0.5).abs().mean())}**" in md


def test_difficulty_zero_variance_from_rollouts(tmp_path):
    """With one sampler the logged groups are attributed to it; binary rewards: both counts agree."""
    difficulty_run(tmp_path, samplers=("vade",), rollouts=True)
    zv = D.Difficulty(tmp_path).zero_variance()
    gen = zv[zv.source.str.startswith("generated")].set_index("step")["fraction"]
    log = zv[zv.source.str.startswith("logged")].set_index("step")["fraction"]
    assert len(log) == len(gen) and np.allclose(gen, log.loc[gen.index])
    ro = pd.read_parquet(tmp_path / "rollouts.parquet")
    want = ro.groupby(["step", "prompt_id"])["reward"].nunique().eq(1).groupby("step").mean()
    assert np.allclose(log.loc[want.index], want.to_numpy())


# ------------------------------------------------------------------------------------------- noisemask
def test_noisemask_maps_sampling_and_classes(tmp_path):
    noisemask_run(tmp_path, epochs=(0, 2), images=6, classes=3, grid=4, size=16)
    data = N.NoiseMasks(tmp_path)
    assert data.epochs == [0, 2]
    z = np.load(tmp_path / "masks" / "epoch_002.npz")
    alpha, beta = z["alpha"].astype(np.float64), z["beta"].astype(np.float64)
    p = data.panel(2)
    assert np.allclose(p.mean, alpha / (alpha + beta)) and not p.log_space

    # the seeded draw is torch.distributions.Beta on the saved maps, drawn for the whole panel as the run
    # draws it (so the run's panel seed reproduces its saved masks)
    grid, pix, masked = data.sample(2, 3, seed=11, sigma=1.0, kernel=1)
    torch.manual_seed(11)
    want = torch.distributions.Beta(torch.as_tensor(z["alpha"]), torch.as_tensor(z["beta"])).sample()[3].numpy()
    assert np.allclose(grid, np.clip(want, 1e-6, 1 - 1e-6), atol=1e-5)
    assert np.allclose(pix, np.kron(grid, np.ones((4, 4))), atol=1e-6)  # kernel 1 = nearest upsampling only
    m = z["image"].mean()  # a redrawn mask pulls pixels toward the panel mean (the run: the dataset mean)
    assert np.allclose(masked, (z["image"][3] - m) * pix[None] + m, atol=1e-5)
    assert np.allclose(p.mask, z["pixel_mask"]) and p.pred.tolist() == ((z["label"] + 2) % 3).tolist()
    assert not np.allclose(data.sample(2, 3, seed=12, sigma=1.0, kernel=1)[0], grid)
    _, blurred, _ = data.sample(2, 3, seed=11, sigma=1.0, kernel=5)
    assert blurred.shape == (16, 16) and blurred.std() < pix.std()  # the blur smooths the patch edges

    means = data.class_means(2)
    labels = z["label"]
    for lab in range(3):
        assert np.allclose(means[lab], (alpha / (alpha + beta))[labels == lab].mean(0))

    acc = data.accuracy()
    assert acc["train/acc"].tolist() == pytest.approx([0.5, 0.55, 0.6])
    assert acc["val/acc"].tolist() == pytest.approx([0.4, 0.5, 0.6])
    md = N.stats_markdown(data, 2, 3, N.SAMPLED, 11, 1.0, 1)
    assert f"grid mask mean = **{C.fmt(grid.mean())}**" in md


def test_noisemask_reads_log_concentrations(tmp_path):
    run = RunDir(tmp_path)
    la = np.full((2, 2, 2), -1.0)
    run.save_masks(0, image=np.zeros((2, 8, 8)), alpha=la, beta=np.zeros((2, 2, 2)), label=np.array([0, 1]))
    data = N.NoiseMasks(tmp_path)
    p = data.panel(0)
    assert p.log_space and np.allclose(p.alpha, np.exp(-1.0)) and np.allclose(p.mean, np.exp(-1) / (np.exp(-1) + 1))
    assert "log-concentrations" in N.stats_markdown(data, 0, 0, N.SAMPLED, 0, 1.0, 1)
    assert data.accuracy() is None  # no metrics.csv: the page says so instead of failing


# ------------------------------------------------------------------------------------------- bad input
def error_text(demo) -> str | None:
    for block in demo.blocks.values():
        if getattr(block, "elem_id", None) == C.ERROR_ELEM_ID:
            return block.value
    return None


@pytest.mark.parametrize("name", list(APPS))
def test_bad_folders_give_a_page_message_and_a_terminal_line(name, tmp_path, capsys):
    mod = APPS[name]
    cases = {
        tmp_path / "nowhere": "is not a folder",
        tmp_path: "is missing",  # an empty folder
    }
    other = tmp_path / "other"
    if name == "filtration":
        noisemask_run(other)
    else:
        filtration_run(other, steps=1)
    cases[other] = "is missing"
    for path, words in cases.items():
        demo = mod.build_app(path)
        text = error_text(demo)
        assert text is not None and words in text and str(path) in text, text
        err = capsys.readouterr().err
        assert "pfkit inspect: error:" in err and words in err


def test_wrong_columns_and_panel_keys_are_named(tmp_path, capsys):
    RunDir(tmp_path / "f").append("rollouts", [{"step": 0, "prompt_id": 0, "reward": 1.0}])
    text = error_text(F.build_app(tmp_path / "f"))
    assert "lacks column(s) sample_idx, prompt, response, score, kept, advantage" in text
    RunDir(tmp_path / "n").save_masks(0, image=np.zeros((1, 4, 4)), label=np.zeros(1))
    text = error_text(N.build_app(tmp_path / "n"))
    assert "lacks alpha, beta" in text
    assert "lacks" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(APPS))
def test_cli_arguments_and_main(name, tmp_path, monkeypatch, capsys):
    """`pfkit inspect NAME RUN_DIR --port N` serves a run folder on that port; an empty folder is a one-line
    error and exit code 2, with no server left running (issue #19: it used to serve an error page forever)."""
    import gradio as gr

    from pfkit.cli import main

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    (tmp_path / "empty").mkdir()
    assert main(["inspect", name, str(tmp_path / "empty"), "--port", "7999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert launched == {} and len(err) == 1 and err[0].startswith("pfkit: error: ") and "empty" in err[0]
    {"filtration": filtration_run, "difficulty": difficulty_run, "noisemask": noisemask_run}[name](tmp_path / "run")
    assert main(["inspect", name, str(tmp_path / "run"), "--port", "7999"]) == 0
    assert launched == {"server_name": "127.0.0.1", "server_port": 7999}
    p = argparse.ArgumentParser()
    APPS[name].add_arguments(p)
    args = p.parse_args(["R", "--host", "0.0.0.0"])
    assert (args.run_dir, args.port, args.host) == ("R", None, "0.0.0.0")
    assert p.parse_args(["R"]).host == "127.0.0.1"


# ------------------------------------------------------------------------------------ 10k-row runs
# Their CPU and wall times (and the browser's page-load time) are figures of `benchmarks/inspectors.py`;
# the tests check that the issue-#20 size builds and renders, not how fast.
@pytest.mark.parametrize("app", APPS_10K)
def test_10k_row_runs_build_and_render(app, tmp_path):
    run_10k(app, tmp_path / "run")
    assert RENDER_10K[app](tmp_path / "run", tmp_path) == 10_000
    assert (tmp_path / ("c.png" if app == "filtration" else "f.png")).stat().st_size > 0


def test_a_step_logged_twice_is_flagged_not_merged(tmp_path, capsys):
    """A reused folder (or a step counter that does not advance) repeats (step, prompt, sample) keys."""
    run = filtration_run(tmp_path, steps=1, prompts=2, n=3)
    again = pd.read_parquet(tmp_path / "rollouts.parquet").assign(reward=lambda t: -t.reward)
    run.append("rollouts", again, step=0)
    data = F.Rollouts(tmp_path)
    assert data.repeated == 6 and [p for _, p in data.prompts(0)] == ["0", "0 #1", "7", "7 #1"]
    for pid in ("0", "0 #1"):  # best-of-N picks within each logged group, not across the two
        g = data.step(0)[data.step(0)["pid"] == pid]
        kept = data.kept(0, "bon")[(data.step(0)["pid"] == pid).to_numpy()]
        assert kept.sum() == 1 and g["reward"].to_numpy()[kept][0] == g["reward"].max()
    assert error_text(F.build_app(tmp_path)) is None
    assert "warning: 6 rows repeat" in capsys.readouterr().err

    difficulty_run(tmp_path / "d", steps=2, prompts=4, samplers=("vade",))
    rows = pd.read_parquet(tmp_path / "d" / "difficulty.parquet")
    RunDir(tmp_path / "d").append("difficulty", rows[rows.step == 1].assign(alpha=50.0), step=1)
    d = D.Difficulty(tmp_path / "d")
    assert d.repeated == 4 and len(d.at("vade", 1)) == 4  # one row per prompt (parts of a step have no order)
    assert set(d.at("vade", 1)["alpha"]) <= set(rows.loc[rows.step == 1, "alpha"]) | {50.0}
    gen = rows[rows.trials > 0]
    assert d.zero_variance()["groups"].sum() == len(gen) + (gen.step == 1).sum()


def test_reload_reads_a_run_that_is_still_going(tmp_path, capsys):
    run = filtration_run(tmp_path / "f", steps=2, prompts=2, n=3)
    data = F.Rollouts(run.path)
    extra = pd.read_parquet(run.table_path("rollouts")).query("step == 1").assign(step=2)
    run.append("rollouts", extra, step=2)
    assert C.reload(data) is None and data.steps == [0, 1, 2] and len(data.df) == 18

    nm = noisemask_run(tmp_path / "n", epochs=(0,))
    masks = N.NoiseMasks(nm.path)
    nm.save_masks(1, **np.load(nm.mask_path(0)))
    assert C.reload(masks) is None and masks.epochs == [0, 1]

    import shutil

    shutil.rmtree(run.path)  # gone under the app: keep showing what was read, say why
    msg = C.reload(data)
    assert "reload failed" in msg and data.steps == [0, 1, 2]
    assert "pfkit inspect: warning: reload failed" in capsys.readouterr().err


def test_preview_builds_and_serves_from_a_notebook(tmp_path, capsys):
    """pfkit.inspect.preview: what the notebooks call; launch=True really serves the page on 127.0.0.1."""
    import urllib.request

    from pfkit.inspect import preview

    run = filtration_run(tmp_path / "run")
    app = preview("filtration", run.path, launch=True)
    try:
        assert f"pfkit inspect filtration {run.path}" in capsys.readouterr().out
        with urllib.request.urlopen(app.local_url, timeout=30) as page:
            assert page.status == 200 and b"gradio" in page.read().lower()
    finally:
        app.close()


@pytest.mark.parametrize("name", sorted(APPS))
def test_control_events_keep_the_latest_value(name, tmp_path):
    """A control changed while a refresh is running must be shown once that refresh ends.

    Gradio's gr.on takes its trigger_mode from the first trigger: "once" for ``.input``/``.load``,
    which silently drops the later change (CI once showed the logged strategy after ``bon`` was ticked).
    """
    make = {"filtration": filtration_run, "difficulty": difficulty_run, "noisemask": noisemask_run}[name]
    make(tmp_path / "run")
    deps = APPS[name].build_app(tmp_path / "run").config["dependencies"]
    controls = [d for d in deps if any(kind in ("change", "input") for _, kind in d["targets"])]
    assert controls
    assert all(d["trigger_mode"] == "always_last" for d in controls), \
        [(d["targets"], d["trigger_mode"]) for d in controls]


# ------------------------------------------------------------------ filtration across the run (issue #20)
def test_search_matches_pandas_and_rejects_bad_queries(tmp_path):
    filtration_run(tmp_path, steps=3, prompts=4, n=5, hack=True)
    raw = pd.read_parquet(tmp_path / "rollouts.parquet")
    data = F.Rollouts(tmp_path)
    key = ["step", "prompt_id", "sample_idx"]

    def same(found, want):
        return sorted(map(tuple, found[key].to_numpy().tolist())) == sorted(map(tuple, want[key].to_numpy().tolist()))

    assert len(data.search(F.Query())) == len(raw)
    q = F.Query(text="RETURN X + 2", reward=(1.0, "3.5"), kept=F.DROPPED)  # case-insensitive substring
    want = raw[raw.response.str.lower().str.contains("return x + 2", regex=False) & raw.reward.between(1.0, 3.5)
               & ~raw.kept]
    assert len(want) and same(data.search(q), want)
    q = F.Query(text=r"f[13]\(", regex=True, fields="prompt only", score=("", 0.5), passed=F.FAILED, hack=F.FLAGGED)
    want = raw[raw.prompt.str.contains(r"f[13]\(") & (raw.score <= 0.5) & (raw.hack != "")]
    assert len(want) and same(data.search(q), want)
    assert same(data.search(F.Query(hack=F.CLEAN, passed=F.PASSED)), raw[(raw.hack == "") & (raw.score >= 1)])
    assert len(data.search(F.Query(text="f1", fields="response only"))) == 0  # the prompt is not searched
    for bad, words in ((F.Query(text="(", regex=True), "invalid regular expression"),
                       (F.Query(reward=(2, 1)), "min 2 is above max 1"),
                       (F.Query(score=("abc", None)), "'abc' is not a number")):
        with pytest.raises(C.BadQuery, match=words):
            data.search(bad)
    plain = F.Rollouts(filtration_run(tmp_path / "plain", steps=1).path)
    assert not plain.has_hack and len(plain.search(F.Query())) == 20
    with pytest.raises(C.BadQuery, match="no 'hack' column"):
        plain.search(F.Query(hack=F.FLAGGED))

    found = data.search(F.Query(kept=F.KEPT))
    t = F.results_table(found, limit=5)
    assert len(t) == 5 and t["kept"].all() and list(t.columns[:3]) == ["step", "prompt", "sample"]
    csv = pd.read_csv(C.csv_file(F.csv_frame(found), "x"))
    assert len(csv) == raw.kept.sum() and "tokens" not in csv and csv["kept"].all()
    md = F.search_markdown(found, len(raw))
    assert f"**{len(found)}** of {len(raw)} samples match" in md
    assert f"pass rate **{C.fmt((found.score >= 1).mean())}**" in md


def test_token_view_numbers_and_missing_columns(tmp_path):
    filtration_run(tmp_path / "t", steps=2, prompts=2, n=3, tokens=True)
    raw = pd.read_parquet(tmp_path / "t" / "rollouts.parquet")
    row = raw[(raw.step == 1) & (raw.prompt_id == 7) & (raw.sample_idx == 2)].iloc[0]
    lp, ref = np.asarray(row.token_logprobs), np.asarray(row.ref_token_logprobs)
    data = F.Rollouts(tmp_path / "t")
    html, md = F.token_view(data, 1, "7", 2, F.TOKEN_MODES[0])
    assert html.count('class="pfkit-tok"') == len(row.tokens)
    assert f"sum log p = **{C.fmt(lp.sum())}**" in md and f"least likely token #{int(np.argmin(lp))}" in md
    worst = int(np.argmin(lp))  # the least likely token is the darkest (opacity 1)
    spans = html.split('<span class="pfkit-tok"')[1:]
    assert "rgba(220,50,50,1.000)" in spans[worst]
    assert f"rgba(220,50,50,{-lp[0] / -lp.min():.3f})" in spans[0]
    html, md = F.token_view(data, 1, "7", 2, F.TOKEN_MODES[1])
    d = lp - ref
    assert f"mean (log p − log p_ref) = **{C.fmt(d.mean())}**" in md
    top = int(np.argmax(np.abs(d)))
    assert ("40,100,220,1.000" if d[top] > 0 else "220,50,50,1.000") in html.split('<span class="pfkit-tok"')[1:][top]

    filtration_run(tmp_path / "noref", steps=1, prompts=1, n=2, tokens=True, ref=False)
    html, md = F.token_view(F.Rollouts(tmp_path / "noref"), 0, "0", 1, F.TOKEN_MODES[1])
    assert "reference log-probs: not logged in this run" in md and html.count("pfkit-tok") > 0
    html, md = F.token_view(F.Rollouts(filtration_run(tmp_path / "none", steps=1).path), 0, "0", 0, F.TOKEN_MODES[0])
    assert html == "" and "not logged in this run" in md


def test_reliability_uses_analyze_and_recommends_by_binned_r2(tmp_path):
    from pfkit.rl import filtration as analyze

    filtration_run(tmp_path, steps=3, prompts=6, n=5, seed=4)
    data = F.Rollouts(tmp_path)
    sub = data.steps_between(1, 2)
    assert sorted(sub["step"].unique()) == [1, 2] and len(sub) == 60
    rel = F.reliability(sub, 6, "steps 1–2")
    x = sub["reward"].to_numpy()
    passed = (sub["score"].to_numpy() >= 1).astype(float)
    groups = np.array_split(np.argsort(x, kind="stable"), 6)
    assert rel.curve["count"].tolist() == [len(g) for g in groups]
    assert np.allclose(rel.curve["score_mean"], [passed[g].mean() for g in groups])
    assert rel.best == rel.table.sort_values("r2_binned", ascending=False).iloc[0]["strategy"]
    assert rel.best_plain == rel.table.sort_values("r2", ascending=False).iloc[0]["strategy"]
    t = rel.table.set_index("strategy")
    assert t.loc["none", "r2"] == pytest.approx(r2(x, sub["score"]))
    md = F.reliability_markdown(rel)
    assert (f"by **binned** R²): **{analyze.STRATEGY_LABELS[rel.best]}** — binned R² = "
            f"**{C.fmt(t.loc[rel.best, 'r2_binned'])}**, plain R² = {C.fmt(t.loc[rel.best, 'r2'])}") in md
    with pytest.raises(C.BadQuery, match="no samples at steps 7–9"):
        data.steps_between(7, 9)
    with pytest.raises(C.BadQuery, match="does not exist"):
        F.load_sample_file(str(tmp_path / "nope.parquet"))
    assert len(F.load_sample_file(str(tmp_path))) == 90

    # the advice is analyze-filtration's: by the binned column, the plain one beside it
    table = pd.DataFrame({"strategy": ["a", "b"], "r2": [0.9, 0.2], "r2_binned": [0.1, 0.8]})
    assert analyze.recommend(table) == "b" and analyze.recommend(table, by="r2") == "a"


def test_url_and_text_helpers():
    class Req:
        query_params = {"run": "/r", "step": "3"}

    assert C.query_params(Req()) == {"run": "/r", "step": "3"} and C.query_params(None) == {}
    assert C.share_query(run=None, step=3, prompt="task/1 #1", sample=0) == "?step=3&prompt=task%2F1+%231&sample=0"
    frame = pd.DataFrame({"a": ["x+1", "y"], "b": ["z", "X+1"]})
    assert C.text_mask(frame, ["a", "b"], "x+1").tolist() == [True, True]
    assert C.text_mask(frame, ["a"], r"^y$", regex=True).tolist() == [False, True]
    assert C.range_mask([0, 1, 2], None, 1).tolist() == [True, True, False]
    assert C.flag_mask([True, False], "no", "yes", "no").tolist() == [False, True]
    html = C.token_html(["<a>", "b"], [-1.0, np.nan], ["t<1>", "t2"], diverging=False)
    assert "&lt;a&gt;" in html and 'title="t&lt;1&gt;"' in html and "rgba(0,0,0,0.000)" in html


def test_filtration_10k_rows_search_tokens_reliability(tmp_path):
    """The run-wide views on a 10k-row run with token columns (`benchmarks/inspectors.py` times them)."""
    run_10k("filtration", tmp_path)
    found, html, rel = filtration_run_wide_views(tmp_path)
    assert len(found) and "pfkit-tok" in html and rel.samples == 100
