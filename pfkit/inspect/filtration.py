"""PF-PPO filtration inspector: ``pfkit inspect filtration RUN_DIR``.

Reads ``rollouts.parquet`` (step, prompt_id, sample_idx, prompt, response, reward, score, kept,
advantage). For a chosen step and prompt it shows the N responses side by side with their reward,
unit-test score, kept/dropped flag and advantage; for the step, reward against test score with the kept
samples marked and R² (kept vs all); R² and pass rate over all steps. The strategy selector re-applies
``pfkit.rl.filtration.select`` (none / bon / br / bw) to the *logged* rewards, so one can see what
another strategy would have trained on and whether its kept samples' rewards track the tests better
(the paper's criterion for choosing a strategy). "logged" shows what the run actually kept.
"""

from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C

TITLE = "PF-PPO filtration inspector"
COLUMNS = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "kept", "advantage"]
STRATEGIES = ("logged", "none", "bon", "br", "bw")
PASS_AT = 1.0 - 1e-9  # a sample "passes" when all its unit tests pass (score is the fraction passed)


def _r2(rewards: np.ndarray, scores: np.ndarray, bins: int | None = None) -> float:
    """``pfkit.rl.filtration.r_squared`` (NaN where undefined: the page shows "n/a")."""
    from pfkit.rl.filtration import r_squared

    return r_squared(np.array(rewards, dtype=np.float64), np.array(scores, dtype=np.float64), bins=bins)


class Rollouts:
    """The logged samples of one run, indexed for the views (all logic; the UI only formats)."""

    def __init__(self, run_dir):
        self.run, df = C.load_table(run_dir, "rollouts", COLUMNS)
        # A (step, prompt, sample) logged more than once (a reused folder, a step counter that did not
        # advance) would merge groups; each repeat becomes its own group "<prompt_id> #k" and is flagged.
        df["round"] = df.groupby(["step", "prompt_id", "sample_idx"], sort=False).cumcount()
        self.repeated = int((df["round"] > 0).sum())
        df = df.sort_values(["step", "prompt_id", "round", "sample_idx"], kind="stable").reset_index(drop=True)
        df["reward"] = df["reward"].astype(np.float64)
        df["score"] = df["score"].astype(np.float64)
        df["kept"] = df["kept"].astype(bool)
        df["passed"] = df["score"] >= PASS_AT
        df["pid"] = df["prompt_id"].astype(str)  # ids may be ints or task-id strings; the UI keys on text
        df.loc[df["round"] > 0, "pid"] += " #" + df["round"].astype(str)
        self.df = df
        self.steps = [int(s) for s in df["step"].unique()]
        self._by_step = {int(s): g for s, g in df.groupby("step", sort=True)}
        self._kept_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ selection
    def prompts(self, step: int) -> list[tuple[str, int]]:
        g = self._by_step[int(step)]
        first = g.drop_duplicates("pid")
        out = []
        for pid, text in zip(first["pid"], first["prompt"]):
            head = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
            out.append((f"{pid}: {head[:60]}", pid))
        return out

    def step(self, step: int) -> pd.DataFrame:
        return self._by_step[int(step)]

    def kept(self, step: int, strategy: str, seed: int = 0) -> np.ndarray:
        """Kept flags of a step's rows (row order of ``step()``) under ``strategy``."""
        g = self.step(step)
        if strategy == "logged":
            return g["kept"].to_numpy()
        return _reselect(self, int(step), strategy, int(seed))

    def step_stats(self, step: int, strategy: str, seed: int = 0, bins: int | None = None) -> dict:
        g = self.step(step)
        r, s = g["reward"].to_numpy(), g["score"].to_numpy()
        k_log = g["kept"].to_numpy()
        k = self.kept(step, strategy, seed)
        return {
            "step": int(step), "samples": len(g), "prompts": int(g["pid"].nunique()),
            "r2_all": _r2(r, s, bins), "r2_kept_logged": _r2(r[k_log], s[k_log], bins),
            "r2_kept": _r2(r[k], s[k], bins), "n_kept": int(k.sum()),
            "pass_rate": float(g["passed"].mean()), "pass_rate_kept": float(g["passed"][k].mean()) if k.any() else float("nan"),
        }

    def curves(self, strategy: str, seed: int = 0, bins: int | None = None) -> pd.DataFrame:
        return _curves(self, strategy, int(seed), bins)


def _reselect(data: Rollouts, step: int, strategy: str, seed: int) -> np.ndarray:
    """Apply ``select`` per prompt group (cached). Groups of different size N are selected bucket by bucket."""
    key = (step, strategy, seed)
    if key in data._kept_cache:
        return data._kept_cache[key]
    import torch

    from pfkit.rl.filtration import select

    g = data.step(step)
    out = np.zeros(len(g), dtype=bool)
    pos = np.arange(len(g))
    sizes = g.groupby("pid", sort=False)["sample_idx"].transform("size").to_numpy()
    for n in np.unique(sizes):
        rows = pos[sizes == n]  # sorted by (prompt_id, round, sample_idx): contiguous groups
        rewards = torch.from_numpy(g["reward"].to_numpy()[rows].reshape(-1, int(n)).copy())
        mask = select(rewards, strategy, generator=torch.Generator().manual_seed(seed))
        out[rows] = np.asarray(mask, dtype=bool).reshape(-1)
    data._kept_cache[key] = out
    return out


def _curves(data: Rollouts, strategy: str, seed: int, bins: int | None) -> pd.DataFrame:
    rows = []
    for step in data.steps:
        st = data.step_stats(step, strategy, seed, bins)
        rows.append({k: st[k] for k in ("step", "r2_all", "r2_kept_logged", "r2_kept", "pass_rate", "pass_rate_kept")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ rendering
def _ids(flags: np.ndarray, idx: np.ndarray) -> str:
    chosen = [str(int(i)) for i in idx[flags]]
    return ", ".join(chosen) if chosen else "none"


def summary_markdown(data: Rollouts, step: int, prompt_id: str, strategy: str, seed: int, bins: int | None) -> str:
    g = data.step(step)
    k = data.kept(step, strategy, seed)
    sel = (g["pid"] == str(prompt_id)).to_numpy()
    idx = g["sample_idx"].to_numpy()[sel]
    st = data.step_stats(step, strategy, seed, bins)
    label = "logged" if strategy == "logged" else strategy
    lines = [
        f"**Step {step}, prompt {prompt_id}** ({sel.sum()} samples) · "
        f"kept (logged): **{_ids(g['kept'].to_numpy()[sel], idx)}**",
    ]
    if strategy != "logged":
        lines.append(f"strategy **{strategy}** would keep: **{_ids(k[sel], idx)}**")
    lines.append(
        f"Step {step} ({st['samples']} samples, {st['prompts']} prompts): "
        f"R² all = **{C.fmt(st['r2_all'])}** · R² kept (logged) = **{C.fmt(st['r2_kept_logged'])}**"
        + ("" if strategy == "logged" else f" · R² kept ({label}) = **{C.fmt(st['r2_kept'])}** ({st['n_kept']} kept)")
        + f" · pass rate = **{C.fmt(st['pass_rate'])}**"
    )
    return "\n\n".join(lines)


def sample_table(data: Rollouts, step: int, prompt_id: str, strategy: str, seed: int) -> pd.DataFrame:
    g = data.step(step)
    sel = (g["pid"] == str(prompt_id)).to_numpy()
    t = g.loc[sel, ["sample_idx", "reward", "score", "passed", "kept", "advantage"]].copy()
    t["reward_rank"] = (-t["reward"]).rank(method="first").astype(int)
    if strategy != "logged":
        t[f"kept ({strategy})"] = data.kept(step, strategy, seed)[sel]
    for c in ("reward", "score", "advantage"):
        t[c] = t[c].astype(float).round(4)
    return t.reset_index(drop=True)


def scatter_figure(data: Rollouts, step: int, strategy: str, seed: int, bins: int | None):
    import seaborn as sns

    g = data.step(step)
    k = data.kept(step, strategy, seed)
    st = data.step_stats(step, strategy, seed, bins)
    fig, ax = C.figure(6.0, 4.2)
    name = "logged" if strategy == "logged" else strategy
    frame = pd.DataFrame({"reward": g["reward"].to_numpy(), "test score": g["score"].to_numpy(),
                          "sample": np.where(k, f"kept ({name})", "dropped")})
    sns.scatterplot(data=frame, x="reward", y="test score", hue="sample", hue_order=[f"kept ({name})", "dropped"],
                    palette=["tab:blue", "lightgray"], style="sample", markers={f"kept ({name})": "o", "dropped": "X"},
                    alpha=0.8, ax=ax, s=30)
    for flags, colour, lab in ((np.ones(len(g), bool), "gray", "all"), (k, "tab:blue", "kept")):
        r, s = frame["reward"].to_numpy()[flags], frame["test score"].to_numpy()[flags]
        if len(r) >= 2 and np.ptp(r) > 0:
            slope, icpt = np.polyfit(r, s, 1)
            xs = np.linspace(r.min(), r.max(), 2)
            ax.plot(xs, slope * xs + icpt, color=colour, lw=1.5, ls="--", label=f"fit {lab}")
    ax.set_title(f"step {step}: R² kept ({name}) = {C.fmt(st['r2_kept'])}, all = {C.fmt(st['r2_all'])}")
    ax.legend(loc="best", fontsize=8)
    return fig


def curves_figure(data: Rollouts, strategy: str, seed: int, bins: int | None, current: int | None = None):
    """R² (gaps where undefined, e.g. every kept sample has the same score) and pass rate per step."""
    from matplotlib.ticker import MaxNLocator

    cur = data.curves(strategy, seed, bins)
    fig, (a1, a2) = C.figure(9.0, 3.4, ncols=2)
    a1.plot(cur["step"], cur["r2_all"], marker=".", label="all samples", color="gray")
    a1.plot(cur["step"], cur["r2_kept_logged"], marker=".", label="kept (logged)", color="tab:blue")
    if strategy != "logged":
        a1.plot(cur["step"], cur["r2_kept"], marker=".", label=f"kept ({strategy})", color="tab:orange")
    a1.set(xlabel="step", ylabel="R² (test score ~ reward)", title="R² over steps", ylim=(-0.02, 1.02))
    a2.plot(cur["step"], cur["pass_rate"], marker=".", color="tab:green", label="all samples")
    a2.plot(cur["step"], cur["pass_rate_kept"], marker=".", color="tab:orange" if strategy != "logged" else "tab:blue",
            label=f"kept ({strategy})")
    a2.set(xlabel="step", ylabel="pass rate (all tests pass)", title="pass rate over steps", ylim=(-0.02, 1.02))
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if current is not None:
            a.axvline(current, color="k", lw=0.8, alpha=0.4)
        a.legend(fontsize=8)
    return fig


def _badge(row, kept_strategy: bool | None, strategy: str) -> str:
    # plain words, no emoji: lab machines and headless browsers often lack an emoji font
    tests = "**passed**" if row.passed else f"failed (score {row.score:.2f})"
    kept = "**KEPT**" if row.kept else "dropped"
    extra = ""
    if kept_strategy is not None:
        extra = f" · {strategy} would {'**keep**' if kept_strategy else 'drop'}"
    adv = "n/a" if pd.isna(row.advantage) else f"{row.advantage:+.3f}"
    return (f"**sample {int(row.sample_idx)}** · reward **{row.reward:.3f}**  \n"
            f"unit tests: {tests}  \n{kept} · advantage {adv}{extra}")


# ------------------------------------------------------------------------------------------------- app
def build_app(run_dir):
    return C.guarded(TITLE, lambda: _build(Rollouts(run_dir)))


def _build(data: Rollouts):
    import gradio as gr
    import seaborn  # noqa: F401  (imported now, not on the first page view: the server starts ready)

    import pfkit.rl.filtration  # noqa: F401  (torch, same reason)

    first = data.steps[-1]
    prompts0 = data.prompts(first)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n`{html.escape(str(data.run.path))}` · {len(data.df)} samples, "
                    f"{len(data.steps)} steps (steps {data.steps[0]}–{data.steps[-1]})")
        if data.repeated:
            gr.Markdown(C.warning(
                f"{data.repeated} rows repeat a (step, prompt_id, sample_idx) already logged: the run wrote the "
                "same step more than once (a reused run folder, or a step counter that did not advance). "
                "Each repeat is shown as its own group, `<prompt_id> #k`."), elem_id="pfkit-warning")
        with gr.Row():
            step = gr.Dropdown(choices=data.steps, value=first, label="step", elem_id="step")
            prompt = gr.Dropdown(choices=prompts0, value=prompts0[0][1], label="prompt", elem_id="prompt")
            strategy = gr.Radio(choices=list(STRATEGIES), value="logged", label="filtration strategy",
                                info="logged = what the run kept; others re-apply select() to the logged rewards",
                                elem_id="strategy")
            seed = gr.Number(value=0, precision=0, label="seed (br)", elem_id="seed", minimum=0)
            bins = gr.Number(value=0, precision=0, label="R² bins (0 = per sample; paper: groups of similar reward)", elem_id="bins", minimum=0)
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
        summary = gr.Markdown(elem_id="summary")
        prompt_code = gr.Code(language="python", label="prompt", interactive=False, elem_id="prompt-code")

        @gr.render(inputs=[step, prompt, strategy, seed])
        def responses(step_v, prompt_v, strategy_v, seed_v):
            if step_v is None or prompt_v is None:
                return
            g = data.step(step_v)
            sel = (g["pid"] == str(prompt_v)).to_numpy()
            ks = data.kept(step_v, strategy_v, int(seed_v or 0))[sel] if strategy_v != "logged" else [None] * sel.sum()
            with gr.Row(elem_id="responses"):
                for row, kst in zip(g.loc[sel].itertuples(index=False), ks):
                    with gr.Column(min_width=260, variant="panel"):
                        gr.Markdown(_badge(row, kst, strategy_v))
                        gr.Code(value=str(row.response), language="python", interactive=False,
                                label=f"response {int(row.sample_idx)}", lines=6)

        table = gr.Dataframe(label="samples of this prompt", interactive=False, elem_id="samples")
        with gr.Row():
            scatter = gr.Plot(label="reward vs test score (this step)", elem_id="scatter")
        curves = gr.Plot(label="R² and pass rate over steps", elem_id="curves")

        def nbins(b):
            return int(b) if b and int(b) >= 2 else None

        def on_step(step_v):
            choices = data.prompts(step_v)
            return gr.Dropdown(choices=choices, value=choices[0][1])

        def refresh(step_v, prompt_v, strategy_v, seed_v, bins_v):
            if step_v is None or prompt_v is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            seed_i, b = int(seed_v or 0), nbins(bins_v)
            g = data.step(step_v)
            if str(prompt_v) not in set(g["pid"]):  # the step changed; the prompt follows
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            text = g.loc[g["pid"] == str(prompt_v), "prompt"].iloc[0]
            return (summary_markdown(data, int(step_v), str(prompt_v), strategy_v, seed_i, b), str(text),
                    sample_table(data, int(step_v), str(prompt_v), strategy_v, seed_i),
                    scatter_figure(data, int(step_v), strategy_v, seed_i, b))

        def refresh_curves(strategy_v, seed_v, bins_v):  # all steps: independent of the chosen step
            return curves_figure(data, strategy_v, int(seed_v or 0), nbins(bins_v))

        def on_reload():
            msg = C.reload(data) or (f"Reloaded at {time.strftime('%H:%M:%S')}: {len(data.df)} samples, "
                                     f"steps {data.steps[0]}–{data.steps[-1]}.")
            return gr.Dropdown(choices=data.steps, value=data.steps[-1]), msg

        inputs = [step, prompt, strategy, seed, bins]
        outs = [summary, prompt_code, table, scatter]
        step.change(on_step, step, prompt).then(refresh, inputs, outs)
        # prompt.input (a user's pick), not .change: a step change updates the prompt and refreshes itself
        gr.on([prompt.input, strategy.change, seed.change, bins.change, demo.load], refresh, inputs, outs, trigger_mode=C.LATEST)
        gr.on([strategy.change, seed.change, bins.change, demo.load], refresh_curves, [strategy, seed, bins], curves, trigger_mode=C.LATEST)
        (reload_btn.click(on_reload, None, [step, status]).then(on_step, step, prompt).then(refresh, inputs, outs)
         .then(refresh_curves, [strategy, seed, bins], curves))
    return demo


def add_arguments(parser):
    C.add_arguments(parser, "rollouts.parquet (a PF-PPO or GRPO run)")


def main(args):
    return C.launch(build_app(args.run_dir), args)
