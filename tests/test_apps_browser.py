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
from _browser import TIMEOUT_MS, choose, chromium, open_app, page, screenshot, serve, wait_text  # noqa: F401  (fixtures)
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


def test_filtration_in_browser(page, tmp_path):  # noqa: F811
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
        screenshot(page, tmp_path / "filtration.png")


def test_difficulty_in_browser(page, tmp_path):  # noqa: F811
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
        screenshot(page, tmp_path / "difficulty.png")


def test_noisemask_in_browser(page, tmp_path):  # noqa: F811
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
        screenshot(page, tmp_path / "noisemask.png")


def test_not_a_run_folder_in_browser(page, tmp_path):  # noqa: F811
    with serve(F.build_app(tmp_path / "not-a-run")) as url:
        open_app(page, url)
        text = wait_text(page, "#pfkit-error", "is not a folder")
        assert "Cannot show this run" in text and "not-a-run" in text
        screenshot(page, tmp_path / "error.png")


# ------------------------------------------------------------------ filtration: across the run (issue #20)
def _found_line(frame: pd.DataFrame, total: int) -> str:
    return (f"{len(frame)} of {total} samples match · {frame.step.nunique()} steps, "
            f"{frame[['step', 'prompt_id']].drop_duplicates().shape[0]} prompt groups · pass rate "
            f"{f3((frame.score >= 1).mean())} · mean reward {f3(frame.reward.mean())} · kept {int(frame.kept.sum())}")


def test_filtration_search_results_csv_and_jump(page, tmp_path):  # noqa: F811
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
        screenshot(page, tmp_path / "filtration-search.png")
