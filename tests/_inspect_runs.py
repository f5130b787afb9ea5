"""Small run folders for the inspector tests, written through RunDir exactly as the modules write them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pfkit.runs import RunDir

HACKS = ("", "", "", "", "exit_early", "patched_assert")  # the sandbox's label; "" = no hack seen


def filtration_run(path, *, steps: int = 3, prompts: int = 4, n: int = 5, seed: int = 0, tokens: bool = False,
                   ref: bool = True, hack: bool = False, long_lines: bool = False) -> RunDir:
    """rollouts.parquet (one part per step, the logged filter = best-worst) + metrics.csv.

    Rewards are distinct within a prompt (so every strategy's choice is unambiguous); the test score
    is a noisy function of the reward, so R² is strictly between 0 and 1. Optional columns as the modules
    will log them: ``tokens`` (list<str>, the response split into tokens), ``token_logprobs`` and, with
    ``ref``, ``ref_token_logprobs`` (list<float>); ``hack`` (string, "" = none); ``long_lines`` appends a
    300-character line to each response (the panels must wrap it, not cut it).
    """
    import re

    rng = np.random.default_rng(seed)
    run = RunDir(path)
    for step in range(steps):
        rows = []
        for p in range(prompts):
            rewards = rng.permutation(n) + rng.uniform(0, 0.5, n) + p * 0.1
            scores = np.clip(np.round((rewards / n + rng.normal(0, 0.3, n)) * 3) / 3, 0, 1)
            kept = np.zeros(n, bool)
            kept[[np.argmax(rewards), np.argmin(rewards)]] = True
            for i in range(n):
                response = f"    return x + {i}  # s{step} p{p} i{i}\n"
                if long_lines:
                    response += "    # " + " ".join(f"word{k}" for k in range(50)) + f" END{i}\n"
                row = {
                    "step": step, "prompt_id": p * 7, "sample_idx": i,
                    "prompt": f"def f{p}(x):\n    \"\"\"Return x plus {p}.\"\"\"\n",
                    "response": response,
                    "reward": float(rewards[i]), "score": float(scores[i]), "kept": bool(kept[i]),
                    "advantage": float(rewards[i] - rewards[kept].mean()) if kept[i] else float("nan"),
                }
                if tokens:
                    toks = re.findall(r"\s+|\w+|[^\w\s]", response)
                    lp = -rng.exponential(1.0, len(toks))
                    row["tokens"] = toks
                    row["token_logprobs"] = lp.tolist()
                    if ref:
                        row["ref_token_logprobs"] = (lp + rng.normal(0, 0.5, len(toks))).tolist()
                if hack:
                    row["hack"] = HACKS[int(rng.integers(len(HACKS)))]
                rows.append(row)
        run.append("rollouts", rows, step=step)
    pd.DataFrame({"step": range(steps), "train/reward": rng.uniform(0, 1, steps)}).to_csv(run.metrics_path,
                                                                                            index=False)
    return run


def big_filtration_run(path, rows: int = 10_000, n: int = 5, **kw) -> RunDir:
    prompts = 20
    steps = rows // (prompts * n)
    return filtration_run(path, steps=steps, prompts=prompts, n=n, seed=1, **kw)


def difficulty_run(path, *, steps: int = 6, prompts: int = 8, k: int = 3, group: int = 4, seed: int = 0,
                   samplers=("vade", "uniform"), rollouts: bool = False, texts: bool = False, tokens: bool = False,
                   hack: bool = False, images: bool = False, ref: bool = False, graded: bool = False,
                   long_lines: bool = False) -> RunDir:
    """difficulty.parquet for each sampler (one row per prompt per step, as samplers.difficulty_rows).

    Binary rewards from fixed true success rates; "vade" picks the k prompts whose posterior mean is
    nearest 0.5, "uniform" a seeded random k. With ``rollouts`` (one sampler only) the groups are
    also logged to rollouts.parquet; ``texts`` gives each a distinct prompt and response
    (``return <j>  # s<step> t<prompt> j<sample>``), ``tokens`` adds ``tokens`` / ``token_logprobs`` as GRPO
    logs them, ``hack`` the sandbox's hack label; ``images`` gives each prompt a PNG (``images/task<i>.png``
    beside the run, 24×32 RGB, prompt i's own colours) and the rollouts an ``image`` column with its absolute
    path, as GRPO writes it for a prompt set with images (pfkit.modules.grpo); ``ref`` adds
    ``ref_token_logprobs`` (GRPO with kl_coef > 0); ``graded`` gives each rollout a unit-test score in
    [0, 1] (two decimals) apart from its 0/1 reward; ``long_lines`` appends a 300-character line to each
    response (the panels must wrap it).
    """
    import re

    rng = np.random.default_rng(seed)
    true_p = np.linspace(0.0, 1.0, prompts)
    run = RunDir(path)
    paths = {}
    if images:
        from pathlib import Path

        from PIL import Image

        folder = Path(path).parent / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(prompts):
            px = np.zeros((24, 32, 3), np.uint8)
            px[..., 0] = 20 * i
            px[:, : 2 + 3 * i, 1] = 200  # a green bar whose width is the prompt's index
            px[::2, :, 2] = rng.integers(0, 256, (12, 32))
            paths[i] = str((folder / f"task{i}.png").resolve())
            Image.fromarray(px).save(paths[i])
    for name in samplers:
        alpha, beta = np.ones(prompts), np.ones(prompts)
        for step in range(steps):
            mean = alpha / (alpha + beta)
            if name == "vade":
                chosen = np.argsort(np.abs(mean - 0.5), kind="stable")[:k]
            else:
                chosen = rng.choice(prompts, k, replace=False)
            succ = np.zeros(prompts)
            trials = np.zeros(prompts)
            ro = []
            for i in chosen:
                r = (rng.uniform(size=group) < true_p[i]).astype(float)
                succ[i], trials[i] = r.sum(), group
                for j in range(group):
                    row = {"step": step, "prompt_id": f"task/{i}", "sample_idx": j, "prompt": "p", "response": "r",
                           "reward": r[j], "score": r[j], "kept": True, "advantage": 0.0}
                    if texts:
                        row["prompt"] = f"def task{i}():\n    \"\"\"Return {i}.\"\"\"\n"
                        row["response"] = f"    return {j}  # s{step} t{i} j{j}\n"
                    if long_lines:
                        row["response"] += "    # " + " ".join(f"word{w}" for w in range(50)) + f" END{j}\n"
                    if graded:
                        row["score"] = float(np.round(rng.uniform(), 2))
                    if tokens:
                        toks = re.findall(r"\s+|\w+|[^\w\s]", row["response"])
                        row["tokens"] = toks
                        row["token_logprobs"] = (-rng.exponential(1.0, len(toks))).tolist()
                        if ref:
                            row["ref_token_logprobs"] = (np.asarray(row["token_logprobs"])
                                                         + rng.normal(0, 0.5, len(toks))).tolist()
                    if hack:
                        row["hack"] = HACKS[int(rng.integers(len(HACKS)))]
                    if images:
                        row["image"] = paths[i]
                    ro.append(row)
            alpha, beta = alpha + succ, beta + trials - succ
            run.append("difficulty", [
                {"step": step, "prompt_id": f"task/{i}", "alpha": alpha[i], "beta": beta[i],
                 "p_mean": alpha[i] / (alpha[i] + beta[i]), "selected": bool(i in chosen),
                 "successes": succ[i], "trials": trials[i], "sampler": name} for i in range(prompts)
            ], step=step)
            if rollouts:
                run.append("rollouts", ro, step=step)
    return run


def noisemask_run(path, *, epochs=(0, 1), images: int = 6, classes: int = 3, grid: int = 4, size: int = 16,
                  seed: int = 0, metrics: bool = True) -> RunDir:
    """masks/epoch_XXX.npz panels shaped as pfkit.modules.noisemask writes them (image [K, H, W] in [0, 1],
    alpha/beta grid×grid concentrations, grid ``mask``, ``pixel_mask``, ``masked``, label, pred) and a
    Lightning-style metrics.csv with train/acc and val/acc logged on separate rows."""
    rng = np.random.default_rng(seed)
    run = RunDir(path)
    label = np.arange(images) % classes
    image = rng.uniform(size=(images, size, size)).astype(np.float32)
    for e in epochs:
        alpha = rng.uniform(0.5, 4.0, (images, grid, grid)).astype(np.float32)
        beta = rng.uniform(0.5, 4.0, (images, grid, grid)).astype(np.float32)
        mask = rng.uniform(0, 1, (images, grid, grid)).astype(np.float32)
        pixel = np.kron(mask, np.ones((size // grid, size // grid), np.float32))
        run.save_masks(e, image=image, alpha=alpha, beta=beta, mask=mask, pixel_mask=pixel,
                       masked=(image - 0.5) * pixel + 0.5, label=label, pred=(label + e) % classes)
    if metrics:
        n = max(epochs) + 1
        rows = []
        for e in range(n):
            rows.append({"epoch": e, "step": 10 * e + 9, "train/acc": 0.5 + 0.05 * e, "val/acc": None})
            rows.append({"epoch": e, "step": 10 * e + 9, "train/acc": None, "val/acc": 0.4 + 0.1 * e})
        pd.DataFrame(rows).to_csv(run.metrics_path, index=False)
    return run


def sampler_run(path, steps=5, n=10, k=3, G=4, samplers=("vade", "uniform"), options=None, config=None) -> RunDir:
    """difficulty.parquet written by the real samplers on fixed success rates (``options``: a sampler's
    make_sampler keyword args); ``config`` (the model's init_args) is written as the run's config.yaml."""
    import torch
    import yaml

    from pfkit.data.samplers import difficulty_rows, make_sampler

    run = RunDir(path)
    p = torch.linspace(0.05, 0.95, n)
    for name in samplers:
        s = make_sampler(name, n, G, seed=1, **(options or {}).get(name, {}))
        g = torch.Generator().manual_seed(3)
        for step in range(steps):
            b = s.collect(k, lambda ids, g=g: (torch.bernoulli(p[ids].unsqueeze(1).expand(len(ids), G), generator=g),
                                               [None] * len(ids)))
            run.append("difficulty", difficulty_rows(s, b, step, names=[f"t{i}" for i in range(n)]), step=step)
    if config is not None:
        run.config_path.write_text(yaml.safe_dump({"model": {"class_path": "pfkit.modules.grpo.GRPOModule",
                                                              "init_args": config}}))
    return run


# ------------------------------------------------------------------------ the 10k-row runs (tests + benchmark)
APPS_10K = ("filtration", "difficulty", "noisemask")


def run_10k(app: str, path) -> None:
    """The issue-#20 size for ``app``: what `benchmarks/inspectors.py` times and the tests check renders."""
    if app == "filtration":  # 10,000 samples: 100 steps x 20 prompts x 5, with token and hack columns
        big_filtration_run(path, rows=10_000, tokens=True, hack=True)
    elif app == "difficulty":  # 10,000 difficulty rows (100 steps x 100 prompts) and 6,400 rollouts
        difficulty_run(path, steps=100, prompts=100, k=16, samplers=("vade",), rollouts=True, texts=True,
                       tokens=True)
    else:  # 10,000 panel images: 10 epochs x 1,000 images (28 x 28, a 7 x 7 mask grid)
        noisemask_run(path, epochs=tuple(range(10)), images=1000, classes=10, grid=7, size=28)


# (text the page must show to be usable, then what every panel drawn shows)
USABLE_10K = {
    "filtration": ([("#summary", "Step 99, prompt 0"), ("#responses", "# s99 p0 i4"),
                    ("#found", "10000 of 10000 samples match")],
                   ["#curves", "#scatter"], ("rel-section", "#rel-summary", "step 0: 100 samples")),
    "difficulty": ([("#stats", "vade: 100 prompts"), ("#focus-info", "at step 99"), ("#focus-responses", "# s99 t"),
                    ("#found", "6400 of 6400 rollouts match")],
                   ["#posteriors", "#focus-plot"], ("decision-section", "#decision", "vade, step 99")),
    "noisemask": ([("#stats", "epoch 9, image 0"), ("#found", "1000 of 1000 images match")],
                  ["#panel", "#classes", "#compare"], None),
}


def join_warm_imports() -> None:
    """The apps import seaborn/torch in a background thread while they serve; let it finish before timing."""
    import threading

    for t in threading.enumerate():
        if t.name == "pfkit-warm-imports":
            t.join()


def render_filtration(path, out) -> int:
    """Build the filtration app on ``path`` and render what its page shows for the last step (two filters),
    figures saved under ``out``; the number of samples read."""
    from pfkit.inspect import filtration as F

    F.build_app(path)
    data = F.Rollouts(path)
    step, pid = data.steps[-1], data.prompts(data.steps[-1])[0][1]
    for strategy in ("logged", "bw"):
        F.summary_markdown(data, step, pid, strategy, 0, None)
        F.sample_table(data, step, pid, strategy, 0)
        F.scatter_figure(data, step, strategy, 0, None).savefig(out / "s.png")
        F.curves_figure(data, strategy, 0, None, step).savefig(out / "c.png")
    return len(data.df)


def render_difficulty(path, out) -> int:
    """Build the difficulty app on ``path`` and render its figures and tables for the last step."""
    from pfkit.inspect import difficulty as D

    D.build_app(path)
    data = D.Difficulty(path)
    last = data.steps("vade")[-1]
    ps = data.default_prompts("vade", last)
    for fig in (D.posterior_figure(data, "vade", last, ps), D.trajectory_figure(data, "vade", ps, last),
                D.selection_figure(data, "vade"), D.zero_variance_figure(data)):
        fig.savefig(out / "f.png")
    D.stats_markdown(data, "vade", last)
    data.prompt_table("vade", last, "most uncertain first (posterior sd)")
    return len(data.df)


def render_noisemask(path, out) -> int:
    """Build the noise-mask app on ``path`` (it draws the default panel) and render its other figures."""
    from pfkit.inspect import noisemask as N

    N.build_app(path)
    data = N.NoiseMasks(path)
    last = data.epochs[-1]
    for fig in (N.class_figure(data, last), N.accuracy_figure(data), N.compare_figure(data, last, 0, 1)):
        fig.savefig(out / "f.png")
    return sum(len(data.panel(e)) for e in data.epochs)


RENDER_10K = {"filtration": render_filtration, "difficulty": render_difficulty, "noisemask": render_noisemask}


def filtration_run_wide_views(path, lap=lambda stage: None):
    """The filtration app's run-wide views on ``path`` (read, a search + its CSV, one per-token view, one
    step's reliability); ``lap(stage)`` is called after each (the benchmark's clock)."""
    from pfkit.inspect import _common as C
    from pfkit.inspect import filtration as F

    data = F.Rollouts(path)
    lap("read")
    found = data.search(F.Query(text=r"x \+ [34]", regex=True, kept=F.KEPT, reward=(1, None), hack=F.CLEAN))
    C.csv_file(F.csv_frame(found), "t")
    lap("search + CSV")
    html, _ = F.token_view(data, data.steps[-1], "0", 4, F.TOKEN_MODES[1])
    lap("token view")
    rel = F.reliability(data.steps_between(0, 0), 10, "step 0")
    lap("reliability of one step")
    return found, html, rel
