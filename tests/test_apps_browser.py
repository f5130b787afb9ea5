"""The three inspectors in a real browser (Debian's Chromium via Playwright): change a control, read the page.

Expected values are computed here from the run folder's files with numpy/torch, not with the app's code.
Each test leaves a full-page screenshot in its tmp dir (``<name>.png``).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from _browser import TIMEOUT_MS, choose, open_app, open_section, serve, shot, token_values, wait_text
from _inspect_runs import difficulty_run, filtration_run, noisemask_run

from pfkit.inspect import difficulty as D
from pfkit.inspect import filtration as F
from pfkit.inspect import noisemask as N
from pfkit.runs import RunDir

pytestmark = pytest.mark.browser


def f3(x) -> str:
    return f"{x:.3f}"


def cells(pg, selector: str, rows: int, cols: int) -> list[list[str]]:
    """The text of a Gradio table's first ``rows`` x ``cols`` body cells (its grid cells carry data-testid)."""
    return [[pg.locator(f'{selector} [data-testid="cell-{r}-{c}"]').inner_text().strip() for c in range(cols)]
            for r in range(rows)]


def test_filtration_in_browser(page, tmp_path):
    filtration_run(tmp_path / "run", steps=3, prompts=4, n=5)
    raw = pd.read_parquet(tmp_path / "run" / "rollouts.parquet")
    with serve(F.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        # the newest step and its first prompt are shown with the logged kept flags
        g = raw[(raw.step == 2) & (raw.prompt_id == 0)].sort_values("sample_idx")
        text = wait_text(page, "#summary", "Step 2, prompt 0")
        assert "kept (logged): " + ", ".join(map(str, g.loc[g.kept, "sample_idx"])) in text

        # step 1, prompt 14, strategy best-of-N: what would have been kept, and its R² over the step
        choose(page, "step", "1")
        wait_text(page, "#summary", "Step 1, prompt 0")
        choose(page, "prompt", "14: def f2(x):")
        wait_text(page, "#summary", "Step 1, prompt 14")
        # two quick changes: the second arrives while the first refresh runs and must still be shown
        page.get_by_label("bw", exact=True).check()
        page.get_by_label("bon", exact=True).check()
        text = wait_text(page, "#summary", "strategy bon would keep")

        step = raw[raw.step == 1]
        best = step.loc[step.groupby("prompt_id")["reward"].idxmax()]
        r, s = step["reward"].to_numpy(), step["score"].to_numpy()
        mine = step[step.prompt_id == 14]
        assert f"strategy bon would keep: {int(mine.loc[mine.reward.idxmax(), 'sample_idx'])}" in text
        assert f"R² all = {f3(np.corrcoef(r, s)[0, 1] ** 2)}" in text
        want = np.corrcoef(best["reward"], best["score"])[0, 1] ** 2 if best["score"].nunique() > 1 else None
        assert f"R² kept (bon) = {f3(want) if want is not None else 'n/a'} (4 kept)" in text

        # the responses of that prompt, side by side, with their numbers
        cards = wait_text(page, "#responses", "# s1 p2 i4")
        for row in mine.itertuples():
            assert f"sample {row.sample_idx} · reward {row.reward:.3f}" in cards
            assert f"return x + {row.sample_idx}  # s1 p2 i{row.sample_idx}" in cards
        assert cards.count("bon would keep") == 1 and cards.count("KEPT") == int(mine.kept.sum())
        table = wait_text(page, "#samples", "kept (bon)")  # the table got the strategy's column
        for row in mine.itertuples():
            assert f"{round(row.reward, 4):g}" in table
        page.locator("#scatter img, #scatter canvas, #scatter svg").first.wait_for()
        shot(page, tmp_path / "filtration.png")


def test_difficulty_in_browser(page, tmp_path):
    difficulty_run(tmp_path / "run", steps=6, prompts=8, samplers=("vade", "uniform"))
    raw = pd.read_parquet(tmp_path / "run" / "difficulty.parquet")
    with serve(D.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        text = wait_text(page, "#stats", "vade: 8 prompts")  # VADE is shown first when the run has it
        v = raw[raw.sampler == "vade"]
        sel = v[v.selected]
        assert f"Mean |p − 0.5| of selected prompts = {f3((sel.p_mean - 0.5).abs().mean())}" in text
        for name, d in raw.groupby("sampler"):
            gen = d[d.trials > 0]
            zero = ((gen.successes == 0) | (gen.successes == gen.trials)).mean()
            assert f"{name} · generated (difficulty): {f3(zero)} overall" in text

        # the uniform sampler's prompts, sorted by closeness to p = 0.5: the first row is the nearest
        choose(page, "sampler", "uniform")
        wait_text(page, "#stats", "uniform: 8 prompts")
        open_section(page, "prompt-section")  # closed until the user opens it
        page.get_by_label("closest to p = 0.5 first", exact=True).check()
        u = raw[raw.sampler == "uniform"]
        last = u[u.step == 5].assign(dist=lambda t: (t.p_mean - 0.5).abs())
        first = last.sort_values(["dist", "prompt_id"]).iloc[0]

        def first_prompt() -> str:  # Gradio's table is not one <tr> per row; read its text in order
            text = page.locator("#prompt-table").inner_text()
            return min((text.find(p), p) for p in last.prompt_id if p in text)[1]

        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while first_prompt() != first.prompt_id and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert first_prompt() == first.prompt_id
        row = page.locator("#prompt-table").inner_text().split(first.prompt_id, 1)[1]
        assert row.split()[0] == f"{first.p_mean:.4f}".rstrip("0").rstrip(".")  # p_mean column, 4 decimals
        page.locator("#posteriors img, #posteriors canvas, #posteriors svg").first.wait_for()

        # the run goes on: a new step appears after "Reload run"
        RunDir(tmp_path / "run").append("difficulty", raw[raw.step == 5].assign(step=6), step=6)
        page.locator("#reload").click()
        wait_text(page, "#status", "newest step 6")
        wait_text(page, "#stats", "uniform: 8 prompts, 7 steps")
        shot(page, tmp_path / "difficulty.png")


def test_noisemask_in_browser(page, tmp_path):
    noisemask_run(tmp_path / "run", epochs=(0, 1), images=6, classes=3, grid=4, size=16)
    z = np.load(tmp_path / "run" / "masks" / "epoch_001.npz")
    alpha, beta = z["alpha"].astype(np.float64), z["beta"].astype(np.float64)
    with serve(N.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        text = wait_text(page, "#stats", "epoch 1, image 0")
        assert f"mean of α/(α+β) = {f3((alpha[0] / (alpha[0] + beta[0])).mean())}" in text
        assert f"mask saved by the run: pixel mask mean = {f3(z['pixel_mask'][0].mean())}" in text
        assert f"label {z['label'][0]} · predicted {z['pred'][0]}" in text

        # image 4, seed 7, resample: the grid mask is Beta(α, β) drawn under that seed
        box = page.locator("#image input[type=number]")
        box.fill("4")
        box.press("Enter")
        wait_text(page, "#stats", "epoch 1, image 4")
        seed = page.locator("#seed input")
        seed.fill("7")
        seed.press("Enter")
        page.locator("#resample").click()
        text = wait_text(page, "#stats", "sampled with seed 7")
        torch.manual_seed(7)
        draw = torch.distributions.Beta(torch.as_tensor(z["alpha"]), torch.as_tensor(z["beta"])).sample()[4]
        assert f"grid mask mean = {f3(draw.clamp(1e-6, 1 - 1e-6).mean().item())}" in text
        assert f"label {z['label'][4]}" in text
        page.locator("#accuracy img, #accuracy canvas, #accuracy svg").first.wait_for()
        shot(page, tmp_path / "noisemask.png")


def test_not_a_run_folder_in_browser(page, tmp_path):
    with serve(F.build_app(tmp_path / "not-a-run")) as url:
        open_app(page, url)
        text = wait_text(page, "#pfkit-error", "is not a folder")
        assert "Cannot show this run" in text and "not-a-run" in text
        shot(page, tmp_path / "error.png")


# ------------------------------------------------------------------ filtration: across the run (issue #20)
def _found_line(frame: pd.DataFrame, total: int) -> str:
    return (f"{len(frame)} of {total} samples match · {frame.step.nunique()} steps, "
            f"{frame[['step', 'prompt_id']].drop_duplicates().shape[0]} prompt groups · pass rate "
            f"{f3((frame.score >= 1).mean())} · mean reward {f3(frame.reward.mean())} · kept {int(frame.kept.sum())}")


def test_filtration_search_results_csv_and_jump(page, tmp_path):
    filtration_run(tmp_path / "run", steps=3, prompts=4, n=5, hack=True, long_lines=True)
    raw = pd.read_parquet(tmp_path / "run" / "rollouts.parquet")
    with serve(F.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        wait_text(page, "#found", f"{len(raw)} of {len(raw)} samples match")  # the empty query lists all

        # text + kept + reward range: counted here with pandas
        page.locator("#q-text textarea, #q-text input").first.fill("return x + 4")
        page.locator("#q-kept").get_by_label("kept", exact=True).check()
        rmin = page.locator("#q-rmin textarea, #q-rmin input").first
        rmin.fill("2.5")
        rmin.press("Tab")
        page.locator("#search").click()
        want = raw[raw.response.str.contains("return x + 4", regex=False) & raw.kept & (raw.reward >= 2.5)]
        assert len(want) > 0
        want = want.sort_values(["step", "prompt_id", "sample_idx"])
        text = wait_text(page, "#found", f"{len(want)} of {len(raw)} samples match")
        assert _found_line(want, len(raw)) in text

        # the CSV is this view: the same samples, with their texts and numbers
        with page.expect_download() as dl:
            page.locator("#download").click()
        got = pd.read_csv(dl.value.path())
        assert list(zip(got.step, got.prompt_id, got.sample_idx)) == list(zip(want.step, want.prompt_id,
                                                                                 want.sample_idx))
        assert np.allclose(got.reward, want.reward) and got.response.tolist() == want.response.tolist()
        assert got.hack.fillna("").tolist() == want.hack.tolist()

        # a result row opens that sample: step, prompt and sample follow, and the link names them
        target = want.iloc[1]
        page.locator('#results [data-testid="cell-1-0"]').click()
        wait_text(page, "#summary", f"Step {target.step}, prompt {target.prompt_id}")
        wait_text(page, "#share", f"step={target.step}&prompt={target.prompt_id}&sample={target.sample_idx}")
        cards = wait_text(page, "#responses", f"# s{target.step} p{target.prompt_id // 7} i")
        assert f"END{target.sample_idx}" in cards  # the 300-character line is there, wrapped (below)

        # reward-hack flag, regex over the response, and a failed-tests filter
        page.locator("#q-text textarea, #q-text input").first.fill(r"i[34]\s")
        page.locator("#q-regex input").check()
        page.locator("#q-kept").get_by_label("any", exact=True).check()
        rmin.fill("")
        rmin.press("Tab")
        page.locator("#q-passed").get_by_label("failed", exact=True).check()
        page.locator("#q-hack").get_by_label("flagged", exact=True).check()
        page.locator("#search").click()
        want = raw[raw.response.str.contains(r"i[34]\s", regex=True) & (raw.score < 1) & (raw.hack != "")]
        assert len(want) > 0
        text = wait_text(page, "#found", f"{len(want)} of {len(raw)} samples match")
        assert _found_line(want, len(raw)) in text
        page.locator("#q-text textarea, #q-text input").first.fill("x + (")
        page.locator("#search").click()
        wait_text(page, "#found", "Search not run: invalid regular expression 'x + ('")

        # no cut lines: every response panel wraps (its scroller is no wider than the panel)
        widths = page.eval_on_selector_all(
            ".pfkit-response .cm-scroller",
            "els => els.map(e => [e.scrollWidth, e.clientWidth, !!e.querySelector('.cm-lineWrapping')])")
        assert widths and all(sw <= cw + 1 and wrapped for sw, cw, wrapped in widths), widths
        shot(page, tmp_path / "filtration-search.png")

        # a unit-test score range (with dropped samples only), counted with pandas
        page.locator("#q-text textarea, #q-text input").first.fill("")
        page.locator("#q-regex input").uncheck()
        page.locator("#q-passed").get_by_label("any", exact=True).check()
        page.locator("#q-hack").get_by_label("any", exact=True).check()
        page.locator("#q-kept").get_by_label("dropped", exact=True).check()
        for box, v in (("#q-smin", "0.3"), ("#q-smax", "0.7")):
            b = page.locator(f"{box} textarea, {box} input").first
            b.fill(v)
            b.press("Tab")
        page.locator("#search").click()
        want = raw[(raw.score >= 0.3) & (raw.score <= 0.7) & ~raw.kept]
        assert 0 < len(want) < len(raw)
        text = wait_text(page, "#found", f"{len(want)} of {len(raw)} samples match")
        assert _found_line(want, len(raw)) in text


def test_filtration_url_and_per_token_view(page, tmp_path):
    filtration_run(tmp_path / "run", steps=3, prompts=4, n=5, tokens=True)
    filtration_run(tmp_path / "plain", steps=2, prompts=2, n=3)  # no token columns
    raw = pd.read_parquet(tmp_path / "run" / "rollouts.parquet")
    row = raw[(raw.step == 1) & (raw.prompt_id == 14) & (raw.sample_idx == 3)].iloc[0]
    lp, ref = np.asarray(row.token_logprobs), np.asarray(row.ref_token_logprobs)
    with serve(F.build_app(tmp_path / "run")) as url:
        open_app(page, url + "?step=1&prompt=14&sample=3")  # a shared link opens that view
        wait_text(page, "#summary", "Step 1, prompt 14")
        info = wait_text(page, "#token-info", "Sample 3 (step 1, prompt 14)")
        assert f"{len(lp)} tokens · sum log p = {f3(lp.sum())} · mean log p = {f3(lp.mean())}" in info
        assert f"least likely token #{int(np.argmin(lp))}" in info
        wait_text(page, "#share", "?step=1&prompt=14&sample=3")
        spans = page.eval_on_selector_all("#tokens .pfkit-tok", "els => els.map(e => [e.textContent, e.title])")
        assert "".join(t for t, _ in spans) == row.response and len(spans) == len(lp)
        for (_tok, title), x, y in zip(spans, lp, ref):  # hover values
            assert f"log p = {x:.4f} · log p_ref = {y:.4f} · policy − ref = {x - y:+.4f}" in title

        page.get_by_label("policy − reference", exact=True).check()
        d = lp - ref
        info = wait_text(page, "#token-info", "the k1 KL estimate")
        assert f"mean (log p − log p_ref) = {f3(d.mean())}" in info
        assert f"largest |difference| at token #{int(np.argmax(np.abs(d)))}" in info
        vals = token_values(page, d)  # the HTML may render a moment after the info line
        assert np.allclose(vals, d, rtol=1e-5, atol=1e-6)
        top = page.locator("#tokens .pfkit-tok").nth(int(np.argmax(np.abs(d)))).get_attribute("style")
        assert ",1.000)" in top  # the largest difference is shaded fully
        shot(page, tmp_path / "filtration-tokens.png")

        choose(page, "sample", "0")
        wait_text(page, "#token-info", "Sample 0 (step 1, prompt 14)")
        wait_text(page, "#share", "?step=1&prompt=14&sample=0")

        # ?run= opens another run folder in this session; it has no token columns and says so
        other = page.context.new_page()
        open_app(other, url + f"?run={tmp_path / 'plain'}&step=0&prompt=7")
        wait_text(other, "#header", f"{tmp_path / 'plain'} · 12 samples, 2 steps")
        wait_text(other, "#summary", "Step 0, prompt 7")
        wait_text(other, "#token-info", "not logged in this run")
        open_app(other, url + f"?run={tmp_path / 'nosuch'}")
        wait_text(other, "#status", f"could not open run '{tmp_path / 'nosuch'}'")
        wait_text(other, "#summary", "Step 2, prompt 0")  # the served run instead
        open_app(other, url + "?run=/etc")  # a link may not open folders elsewhere on the server
        wait_text(other, "#status", "is not beside the served run")
        wait_text(other, "#summary", "Step 2, prompt 0")


def _weighted_r2(x, y, w) -> float:
    m = w > 0
    x, y, w = x[m], y[m], w[m]
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    return float(np.sum(w * (x - mx) * (y - my)) ** 2 / (np.sum(w * (x - mx) ** 2) * np.sum(w * (y - my) ** 2)))


def _binned_r2(x, y, w, bins) -> float:
    m = w > 0
    x, y, w = x[m], y[m], w[m]
    groups = np.array_split(np.argsort(x, kind="stable"), min(bins, len(x)))
    gx = [np.average(x[g], weights=w[g]) for g in groups]
    gy = [np.average(y[g], weights=w[g]) for g in groups]
    return float(np.corrcoef(gx, gy)[0, 1] ** 2)


def _strategy_weights(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Inclusion probabilities by hand: none all, BoN the best, BW best + worst, BR best + 1/(N-1) each other."""
    out = {k: np.zeros(len(frame)) for k in ("none", "bon", "br", "bw")}
    for _, g in frame.groupby(["step", "prompt_id"]):
        pos = frame.index.get_indexer(g.index)
        best, worst = pos[np.argmax(g.reward.to_numpy())], pos[np.argmin(g.reward.to_numpy())]
        out["none"][pos] = 1.0
        out["bon"][best] = 1.0
        out["bw"][[best, worst]] = 1.0
        out["br"][pos] = 1.0 / (len(g) - 1)
        out["br"][best] = 1.0
    return out


def test_filtration_reliability_in_browser(page, tmp_path):
    from scipy import stats

    filtration_run(tmp_path / "run", steps=4, prompts=5, n=5, seed=2)
    filtration_run(tmp_path / "sft_samples", steps=1, prompts=6, n=4, seed=5)  # a samples set (one step)
    raw = pd.read_parquet(tmp_path / "run" / "rollouts.parquet")
    with serve(F.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        open_section(page, "rel-section")  # closed until the user opens it
        wait_text(page, "#rel-summary", "step 0: 25 samples, 5 prompt groups, 10 equal-count reward bins")
        for box, value in (("#rel-first", "1"), ("#rel-last", "3"), ("#rel-bins", "4")):
            inp = page.locator(f"{box} input")
            inp.fill(value)
            inp.press("Tab")
        page.locator("#rel-compute").click()
        text = wait_text(page, "#rel-summary", "steps 1–3: 75 samples, 15 prompt groups, 4 equal-count reward bins")

        sub = raw[raw.step.between(1, 3)].sort_values(["step", "prompt_id", "sample_idx"]).reset_index(drop=True)
        x, score = sub.reward.to_numpy(), sub.score.to_numpy()
        passed = (score >= 1).astype(float)
        groups = np.array_split(np.argsort(x, kind="stable"), 4)
        got = cells(page, "#rel-curve", 4, 7)
        for g, row in zip(groups, got):
            k, n = int(passed[g].sum()), len(g)
            lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0  # Clopper-Pearson, by its formula
            hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
            assert int(row[3]) == n and float(row[1]) == pytest.approx(x[g].min(), abs=1e-4)
            assert float(row[4]) == pytest.approx(k / n, abs=1e-4)
            assert float(row[5]) == pytest.approx(lo, abs=1e-4) and float(row[6]) == pytest.approx(hi, abs=1e-4)

        w = _strategy_weights(sub)
        labels = {"none": "none (PPO-M)", "bon": "BoN", "br": "BR", "bw": "BW"}
        table = {r[0]: r for r in cells(page, "#rel-table", 4, 4)}
        binned = {}
        for s, ws in w.items():
            r = table[labels[s]]
            binned[s] = _binned_r2(x, score, ws, 4)
            assert float(r[1]) == pytest.approx(ws.sum() / 15, abs=0.01)
            assert float(r[2]) == pytest.approx(binned[s], abs=1e-4), s
            assert float(r[3]) == pytest.approx(_weighted_r2(x, score, ws), abs=1e-4), s
        best = max(binned, key=binned.get)
        assert (f"by binned R²): {labels[best]} — binned R² = {f3(binned[best])}, "
                f"plain R² = {f3(_weighted_r2(x, score, w[best]))}") in text
        page.locator("#rel-plot img, #rel-plot canvas, #rel-plot svg").first.wait_for()
        shot(page, tmp_path / "filtration-reliability.png")

        # a samples file (the PF-PPO demo's sft_samples folder), then a path that is not there
        box = page.locator("#rel-file textarea, #rel-file input").first
        box.fill(str(tmp_path / "sft_samples"))
        page.locator("#rel-compute").click()
        wait_text(page, "#rel-summary", f"samples file {tmp_path / 'sft_samples'}: 24 samples, 6 prompt groups")
        box.fill(str(tmp_path / "missing.parquet"))
        page.locator("#rel-compute").click()
        wait_text(page, "#rel-summary", "Not computed:")
        assert "does not exist" in page.locator("#rel-summary").inner_text()


# The 10k-row page-load test (all three apps) is test_inspect_browser.py::test_10k_rows_page_load_and_server_start.
