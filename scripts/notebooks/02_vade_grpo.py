# %% [markdown]
# # 2 · VADE + GRPO: choosing prompts whose rollouts are informative
#
# GRPO scores each of G rollouts of a prompt *against the others of its group*
# (advantage = reward − group mean, scaled by the group std). When all G rewards are equal — the policy
# always solves the prompt, or never does — every advantage is 0 and the whole group contributes **no
# gradient**: those G rollouts were paid for and thrown away. VADE (Hu et al., Nov 2025, arXiv 2511.18902)
# avoids that *before* rolling out. Its algorithm box, from the authors' method figure (the paper's method
# text was not retrievable; ../shared/research/vade.md):
#
# 1. per prompt, pseudo-counts (a, b) from 0, and one **Thompson draw** p̃ ~ Beta(a + 1, b + 1);
# 2. the **information gain** I = p̃(1 − p̃)², maximal at p̃ = 1/3; the **top-B** prompts are rolled out;
# 3. **two-scale decay**, exclusive: selected prompts a ← 0.2·a + r, b ← 0.2·b + (G − r); all others
#    a, b ← 0.999·a, 0.999·b.
#
# It only changes *which prompts are sampled*, not the GRPO loss. This notebook builds each piece with
# `pfkit.rl.vade.BetaTracker`, then shows the **VADE study** (`studies/vade.yaml`: uniform, DAPO's filter,
# GRESO, MoPPS, VADE and its three ablations on GRPO, plus GSPO) from its stored table, and re-runs a tiny
# grid of it.
#
# **Data**: nothing beyond the kit (embedded policy + generated code task). `QUICK = True` (default; CI)
# re-runs the study's smoke-test grid (2 arms, 1 seed, tiny sizes: not a result); the stored table is the
# full study's.

# %% [parameters]
import os

QUICK = os.environ.get("PFKIT_NOTEBOOK_QUICK", "1") != "0"
RUNS = os.environ.get("PFKIT_NOTEBOOK_RUNS", "../runs/notebooks")  # where this notebook's run folders go
POLICY = os.environ.get("PFKIT_POLICY", "embedded")  # or any local HF checkpoint folder
LAUNCH_INSPECTOR = os.environ.get("PFKIT_NOTEBOOK_LAUNCH", "0") == "1"  # start (and stop) the Gradio app here

# %%
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import transformers

from pfkit import viz
from pfkit.rl.advantages import group_relative
from pfkit.rl.vade import BetaTracker
from pfkit.runs import RunDir

viz.theme()
transformers.utils.logging.disable_progress_bar()
OUT = Path(RUNS).resolve() / "02_vade_grpo"
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(min(4, os.cpu_count() or 1))
G = 8 if not QUICK else 4  # rollouts per prompt (group size)
print("quick:", QUICK, "| runs:", OUT, "| group size G =", G)

# %% [markdown]
# ## 1 · Zero-variance groups
#
# Group-relative advantages (`pfkit.rl.advantages.group_relative`) for three groups of G = 4 binary
# rewards — mixed, all-fail, all-pass:

# %%
rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
adv = group_relative(rewards, group_size=4)
pd.DataFrame({"group": np.repeat(["mixed", "all fail", "all pass"], 4), "reward": rewards.numpy(),
              "advantage": adv.numpy().round(3)})

# %% [markdown]
# Only the mixed group carries signal. For a prompt the policy solves with probability p, a group of G
# binary rewards is all-equal with probability p^G + (1−p)^G: near-certain for easy and hopeless prompts.
# Now the real thing: G samples for each of a set of code problems from the embedded policy, scored by
# their unit tests in the sandbox (`pfkit.data.prompts.code_prompt_set`).

# %%
from pfkit.data.prompts import code_prompt_set
from pfkit.data.samplers import zero_variance
from pfkit.models import load_policy
from pfkit.rollout import generate
from pfkit.tasks import codegen

model, tok = load_policy(POLICY)
n_probe = 24 if QUICK else 128
problems = codegen.splits(seed=0)["train"][:n_probe]
prompt_set = code_prompt_set(problems)
ro = generate(model, tok, prompt_set.prompts, n=G, max_new_tokens=96, temperature=1.0, stop=prompt_set.stop, seed=0)
scores = torch.tensor(prompt_set.score([i for i in range(n_probe) for _ in range(G)], ro.texts)).view(n_probe, G)
zv = zero_variance(scores)
rate = scores.mean(1)
print(f"{n_probe} prompts x {G} samples: mean pass rate {float(rate.mean()):.3f}, "
      f"zero-variance groups {int(zv.sum())}/{n_probe} ({float(zv.float().mean()):.0%}) -> "
      f"{int(zv.sum()) * G} of {n_probe * G} rollouts give no gradient")

# %%
fig, axes = viz.figure(2, 1, 4.4, 3.2)
p = np.linspace(0, 1, 201)
for g in (4, 8, 16):
    axes[0].plot(p, p**g + (1 - p) ** g, label=f"G={g}")
axes[0].set_xlabel("success probability p")
axes[0].set_ylabel("P(group has zero variance)")
axes[0].legend(fontsize=8)
sns.histplot(pd.DataFrame({"pass rate": rate.numpy(), "zero variance": zv.numpy()}), x="pass rate",
             hue="zero variance", bins=G + 1, binrange=(-0.5 / G, 1 + 0.5 / G), multiple="stack", ax=axes[1])
axes[1].set_title("embedded policy: per-prompt pass rate", fontsize=9)
fig

# %% [markdown]
# ## 2 · The Beta posterior and the figure's worked example
#
# `BetaTracker` stores α = 1 + a and β = 1 + b, so Beta(α, β) is the figure's Beta(a + 1, b + 1) and
# `counts()` gives (a, b). A group of G rewards r_j ∈ [0, 1] adds r = Σ r_j to a and G − r to b (binary
# rewards: the correct count; a continuous reward of 0.7 counts as 0.7 of a success — the paper does not
# say how continuous rewards enter). The figure's worked example (G = 8): two selected samples and one
# that was not selected.

# %%
tracker = BetaTracker(3)  # the paper's form: variant="paper"
tracker.alpha = torch.tensor([1 + 0.1, 1 + 2.7, 1 + 9.0], dtype=torch.float64)
tracker.beta = torch.tensor([1 + 8.4, 1 + 5.3, 1 + 0.2], dtype=torch.float64)
before = [tuple(round(float(x), 4) for x in pair) for pair in zip(*tracker.counts())]
tracker.update([0, 1], [1, 0, 0, 0, 0, 0, 0, 0] + [1, 1, 0, 1, 0, 0, 1, 0], group_size=8)
tracker.step()
after = [tuple(round(float(x), 4) for x in pair) for pair in zip(*tracker.counts())]
pd.DataFrame({"sample": ["selected, 1/8 correct", "selected, 4/8 correct", "not selected"],
              "(a, b) before": before, "(a, b) after": after,
              "figure": ["(1.02, 8.68)", "(4.54, 5.06)", "(8.991, 0.1998)"]})

# %%
viz.beta_densities({f"{n}: Beta({a + 1:.2f}, {b + 1:.2f})": (a + 1, b + 1)
                    for n, (a, b) in zip(["1/8", "4/8", "unselected"], after)})

# %% [markdown]
# ## 3 · Thompson sampling and the information gain p̃(1 − p̃)²
#
# To pick k prompts, draw p̃ per prompt and take the k largest I(p̃). Unlike the Bernoulli variance
# p(1 − p) (the paper's ablation, symmetric about ½), I peaks at p̃ = 1/3: a prompt solved a third of the
# time outranks one solved two thirds of the time. The *draw* (not the posterior mean) keeps exploring
# prompts the tracker knows little about; ranking by the mean is the "greedy" ablation (our reading of
# the name). We feed a tracker the groups from section 1 and look at one draw:

# %%
from pfkit.rl.vade import info_gain

grid = torch.linspace(0, 1, 201, dtype=torch.float64)
fig, axes = viz.figure(2, 1, 4.4, 3.2)
axes[0].plot(grid, info_gain(grid, "infogain"), label="p(1−p)² (VADE)")
axes[0].plot(grid, info_gain(grid, "variance"), label="p(1−p) (ablation)", ls="--")
axes[0].axvline(1 / 3, color="grey", lw=0.8)
axes[0].set_xlabel("success probability p")
axes[0].legend(fontsize=8)
tracker = BetaTracker(n_probe)
tracker.update(list(range(n_probe)), scores.reshape(-1), group_size=G)
k = 8
score = tracker.scores(torch.Generator().manual_seed(1))
chosen = tracker.select(k, torch.Generator().manual_seed(1))  # same generator state -> the same draw
a, b = tracker.alpha, tracker.beta
sd = torch.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
viz.thompson_panel(tracker.p_mean, score, chosen, uncertainty=sd, ax=axes[1])
fig

# %% [markdown]
# Over many draws, how often each prompt is chosen, under the paper's score and under p(1 − p):

# %%
freq = []
for variant in ("paper", "p1p"):
    t = BetaTracker(n_probe, variant=variant)
    t.update(list(range(n_probe)), scores.reshape(-1), group_size=G)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(n_probe)
    for _ in range(200):
        counts[t.select(k, gen)] += 1
    freq.append(pd.DataFrame({"posterior mean": t.p_mean.numpy(), "chosen fraction": (counts / 200).numpy(),
                              "score": variant}))
fig, ax = viz.figure(width=5, height=3.4)
sns.scatterplot(pd.concat(freq), x="posterior mean", y="chosen fraction", hue="score", ax=ax)
ax.set_title(f"selection frequency over 200 Thompson draws (k={k} of {n_probe})", fontsize=9)
fig

# %% [markdown]
# ## 4 · The two-scale decay
#
# The policy improves, so old evidence goes stale. In the paper's form the two decays are **exclusive**: a
# prompt rolled out this step keeps 0.2 of its old counts and adds the new group (fast); a prompt not
# rolled out keeps 0.999 of them (slow). `variant="last_update"` keeps only the newest group (λ1 = 0; our
# reading of the ablation's name); `variant="kit"` is pfkit's earlier form (0.8 per visit and 0.99 on
# every prompt every step, selected ones included). One prompt: 8 passes at step 0, then an all-fail group
# every 10 steps:

# %%
trace = []
for name in ("paper", "last_update", "kit"):
    t = BetaTracker(1, variant=name)
    for step in range(60):
        if step == 0:
            t.update([0], [1.0] * 8, group_size=8)
        elif step % 10 == 0:
            t.update([0], [0.0] * 8, group_size=8)
        trace.append({"variant": name, "step": step, "posterior mean": float(t.p_mean[0]),
                      "counts a+b": float(sum(c[0] for c in t.counts()))})
        t.step()
trace = pd.DataFrame(trace)
fig, axes = viz.figure(2, 1, 4.6, 3.2)
sns.lineplot(trace, x="step", y="posterior mean", hue="variant", ax=axes[0], legend=False)
sns.lineplot(trace, x="step", y="counts a+b", hue="variant", ax=axes[1])
axes[1].legend(fontsize=7)
fig

# %% [markdown]
# ## 5 · The VADE study (stored table)
#
# `pfkit study -c studies/vade.yaml --workers 1` trains one GRPO run per (arm, seed) from the embedded policy
# until the **same rollout budget** is spent (the filtering samplers' dropped groups count, and no sampler
# overruns it), then evaluates the **unfiltered held-out validation split** (problems no sampler ever selects
# from) at temperature 1. Arms: `uniform`, `dapo_filter` (DAPO: drop all-equal groups, refill), `greso`
# (GRESO: skip prompts with a zero-variance streak before rollout), `mopps` (MoPPS-style: discounted Beta,
# the draw closest to 0.5), `vade` (the paper's form) and its ablations `vade_p1p`, `vade_greedy`,
# `vade_last_update`, and GSPO `gspo_uniform` / `gspo_vade`. The job is `pfkit.demos.vade:run_arm`, the same
# function `pfkit demo vade` runs. The YAML states the paper's prediction and how the grid was sized.
#
# The stored table `studies/results/vade.csv` has one row per run; per arm, mean and 95% t-interval over
# seeds (`pfkit.study.summarize`), with the seeds and evaluation samples behind every figure:

# %%
from pfkit.study import format_summary, load_study, summarize

ROOT = Path("..").resolve()
study = load_study(ROOT / "studies" / "vade.yaml")
print("prediction (stated before running):", study.prediction)
table_path = ROOT / "studies" / "results" / "vade.csv"
stored = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame()
if stored.empty:
    print(f"{table_path} is not there yet: run the study first")
else:
    per_arm, paired = summarize(stored, study)
    print(f"{stored['arm'].nunique()} arms x {stored['seed'].nunique()} seeds; evaluation samples per run "
          f"(n_eval): {sorted(stored['n_eval'].unique().tolist())}")
    show = ["val_pass_final", "val_gain", "val_auc", "rollouts_to_target_ratio", "reached_target",
            "eff_ratio_mean", "mixed_generated_mean"]
    cell = per_arm[per_arm.metric.isin(show)].assign(
        value=lambda d: d.apply(lambda r: f"{r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] n={r.n}", axis=1))
    display_table = cell.pivot(index="arm", columns="metric", values="value").reindex(
        [a.name for a in study.arms])[[m for m in show if m in set(cell.metric)]]
display_table if not stored.empty else None

# %% [markdown]
# Paired by seed against each algorithm's `uniform` arm (same seed = same training prompts and the same
# evaluation draws), mean difference with its 95% CI and the paired t-test p:

# %%
if not stored.empty:
    pd_show = paired[paired.metric.isin(["val_pass_final", "val_auc", "eff_ratio_mean", "mixed_generated_mean"])]
    display_table = pd_show.pivot(index="arm", columns="metric", values="mean_diff").round(4)
    print(format_summary(study, stored, per_arm[per_arm.metric.isin(show)], pd_show))
display_table if not stored.empty else None

# %% [markdown]
# The **effective-gradient ratio** over training steps (the paper's Fig. 3): the share of the batch's
# groups with mixed rewards. `dapo_filter` and `greso` train only on mixed groups by construction (their
# cost shows as rollouts spent on dropped groups: "mixed among generated"). Next to it, validation pass rate
# against rollouts spent (the curve's cheaper estimator, 64 x curve_samples per point):

# %%
curves_path = ROOT / "studies" / "results" / "vade_curves.csv"
steps_path = ROOT / "studies" / "results" / "vade_steps.csv"
fig = None
if curves_path.is_file() and steps_path.is_file():
    curves, steps = pd.read_csv(curves_path), pd.read_csv(steps_path)
    fig, axes = viz.figure(3, 1, 4.6, 3.6)
    grpo = steps[~steps.arm.str.startswith("gspo")]
    sns.lineplot(grpo, x="step", y="eff_ratio", hue="arm", errorbar=("ci", 95), ax=axes[0], legend=False)
    axes[0].set_title("effective-gradient ratio (trained batch)", fontsize=9)
    sns.lineplot(grpo, x="rollouts", y="mixed_generated", hue="arm", errorbar=None, ax=axes[1], legend=False)
    axes[1].set_title("mixed groups among all generated", fontsize=9)
    sns.lineplot(curves, x="rollouts", y="val_pass", hue="arm", errorbar=None, marker="o", ax=axes[2])
    axes[2].set_title("validation pass rate vs rollouts spent", fontsize=9)
    axes[2].legend(fontsize=6)
else:
    print("no stored curves yet")
fig

# %% [markdown]
# ## 6 · Re-running the study (tiny grid)
#
# The study's smoke-test grid (`quick:` in the YAML: 2 arms, 1 seed, tiny sizes; *not a result*), through
# the same runner and job, into this notebook's run folder; the full grid is the command above.

# %%
from pfkit.demos.vade import collect_curves
from pfkit.study import run_study

quick = load_study(ROOT / "studies" / "vade.yaml", quick=True)
quick.overrides["model.init_args.policy"] = POLICY
quick_out = OUT / "study_quick"
results, errors = run_study(quick, quick_out, workers=1, log=lambda m: None)
assert not errors, errors
q_arm, q_paired = summarize(results, quick)
print(format_summary(quick, results, q_arm, q_paired))
q_curves, q_steps = collect_curves(quick_out)
fig, axes = viz.figure(2, 1, 4.4, 3.2)
sns.lineplot(q_steps, x="step", y="eff_ratio", hue="arm", ax=axes[0])
sns.lineplot(q_curves, x="rollouts", y="val_pass", hue="arm", marker="o", ax=axes[1])
fig

# %% [markdown]
# ## 7 · The difficulty inspector
#
# Posteriors per prompt over time, which prompts each step selected, and zero-variance fractions, from a
# run folder's `difficulty.parquet`:
#
# ```bash
# pfkit inspect difficulty runs/study_vade/vade/seed_0      # or: python apps/difficulty.py RUN_DIR
# ```
#
# `preview(name, run_dir)` builds the same `gradio.Blocks` app without serving it; `LAUNCH_INSPECTOR = True`
# serves it from this kernel (non-blocking) — stop it with `app.close()`.

# %%
from pfkit.inspect import preview

vade_run = quick_out / "vade" / "seed_0"
diff = RunDir(vade_run).read("difficulty")
last = diff[diff["step"] == diff["step"].max()]
print(f"{diff['prompt_id'].nunique()} prompts over {diff['step'].nunique()} steps; last step:")
print(last.sort_values("p_mean")[["prompt_id", "alpha", "beta", "p_mean", "selected"]].head(8).to_string())
app = preview("difficulty", vade_run, launch=LAUNCH_INSPECTOR)  # a gradio.Blocks; served only with LAUNCH_INSPECTOR
if LAUNCH_INSPECTOR:
    app.close()  # remove this line to keep it running while you explore

# %% [markdown]
# ## 8 · Image + question prompts (the paper's setting, in miniature)
#
# VADE was proposed for multimodal RL (Qwen2.5-VL on visual math and science). `pfkit demo vade --task visual`
# runs `studies/vade_visual.yaml`: GRPO from the shipped tiny LLaVA (`pfkit/assets/vlm`, trained by
# `python scripts/train_vlm.py`) on the embedded visual task (`pfkit.tasks.visual`: generated shapes, counts,
# colours, positions and bar charts at three difficulty levels, answers checked exactly), uniform vs VADE,
# paired seeds, held-out prompts (never selected from) evaluated at temperature 1. A few of GRPO's training
# prompts, as the policy sees them (the image, then the question and " Answer:"):

# %%
import json

from pfkit.demos.vade import VISUAL_TRAIN_STREAM
from pfkit.models import EMBEDDED_VLM
from pfkit.tasks import visual

vstudy = load_study(ROOT / "studies" / "vade_visual.yaml")
vis = visual.generate(int(vstudy.overrides["data.init_args.n_train"]), seed=VISUAL_TRAIN_STREAM)
vis_by_id = {p.task_id: p for p in vis}
fig, axes = viz.figure(5, 1, 2.1, 2.5)
for ax, p in zip(axes, vis[:5]):
    ax.imshow(p.image)
    ax.set_title(f"{p.kind}/{p.level}: {p.question}\n→ {p.answer}", fontsize=6, wrap=True)
    ax.axis("off")
fig

# %% [markdown]
# The policy's own training report (`train_report.json`, written by the script): held-out accuracy under
# T = 1 sampling and how success spreads over prompts — GRPO needs prompts that are neither always nor
# never solved:

# %%
report = json.loads((EMBEDDED_VLM / "train_report.json").read_text())
held = report.get("heldout", report)
print(f"held-out ({report.get('heldout_split', 'val')}) accuracy {report['heldout_accuracy']:.3f} "
      f"on {report['n_eval']} samples ({report['eval_samples_per_prompt']} per prompt)")
pd.DataFrame({k: {"accuracy": b["accuracy"], "never": b["frac_prompts_never"], "always": b["frac_prompts_always"]}
              for k, b in held.get("by_kind", {}).items()}).T

# %% [markdown]
# The study's stored table (`studies/results/vade_visual.csv`, one row per run), mean and 95% t-interval over
# seeds, and the paired (by seed) differences against uniform:

# %%
vtable_path = ROOT / "studies" / "results" / "vade_visual.csv"
vstored = pd.read_csv(vtable_path) if vtable_path.is_file() else pd.DataFrame()
if vstored.empty:
    print(f"{vtable_path} is not there yet: run `pfkit demo vade --task visual` first")
else:
    v_arm, v_paired = summarize(vstored, vstudy)
    print(format_summary(vstudy, vstored, v_arm, v_paired))

# %% [markdown]
# One prompt's posterior in the VADE run (seed 0; `studies/results/vade_visual_posteriors.csv`, stored by the
# demo from the run's `difficulty.parquet`): the prompt VADE selected most often, its image, its posterior
# mean over the steps (dots: steps it was rolled out) and its final Beta(α, β). In the app:
# `pfkit inspect difficulty RUN_DIR` shows the image next to the posterior.

# %%
post_path = ROOT / "studies" / "results" / "vade_visual_posteriors.csv"
fig = None
if post_path.is_file():
    post = pd.read_csv(post_path)
    pid = post.groupby("prompt_id")["selected"].sum().idxmax()
    one = post[post.prompt_id == pid].sort_values("step")
    p = vis_by_id[pid]
    fig, axes = viz.figure(3, 1, 3.0, 2.8)
    axes[0].imshow(p.image)
    axes[0].set_title(f"{p.question}\n→ {p.answer}", fontsize=7)
    axes[0].axis("off")
    axes[1].plot(one.step, one.p_mean)
    axes[1].scatter(one.step[one.selected], one.p_mean[one.selected], s=12)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("posterior mean")
    axes[1].set_title(f"{pid}: rolled out {int(one.selected.sum())} times", fontsize=8)
    last_row = one.iloc[-1]
    viz.beta_densities({f"step {int(last_row.step)}: Beta({last_row.alpha:.2f}, {last_row.beta:.2f})":
                        (last_row.alpha, last_row.beta)}, ax=axes[2])
else:
    print(f"{post_path} is not there yet: run `pfkit demo vade --task visual` first")
fig
