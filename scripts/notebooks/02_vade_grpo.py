# %% [markdown]
# # 2 · VADE + GRPO: choosing prompts whose rollouts are informative
#
# GRPO scores each of G rollouts of a prompt *against the others of its group*
# (advantage = reward − group mean, scaled by the group std). When all G rewards are equal — the policy
# always solves the prompt, or never does — every advantage is 0 and the whole group contributes **no
# gradient**: those G rollouts were paid for and thrown away. VADE (Hu et al., Nov 2025, arXiv 2511.18902)
# avoids that *before* rolling out:
#
# 1. keep a **Beta(α, β) posterior** over each prompt's success probability, updated from its groups;
# 2. choose the next batch by **Thompson sampling**: draw p̃ per prompt, prefer the largest expected reward
#    variance p̃(1−p̃) (the information-gain criterion);
# 3. **decay** old evidence toward the prior on two time scales, because the policy keeps changing.
#
# It only changes *which prompts are sampled*, not the GRPO loss. This notebook builds each piece with
# `pfkit.rl.vade.BetaTracker`, then compares `uniform`, `dapo_filter` (DAPO's over-sample-and-drop) and
# `vade` on the embedded code task, and opens the difficulty inspector.
#
# **Data**: nothing beyond the kit (embedded policy + generated code task). `QUICK = True` (default; CI)
# uses a handful of prompts and steps: curves are a smoke test; `PFKIT_NOTEBOOK_QUICK=0` for real ones.

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
# ## 2 · The Beta posterior, step by step
#
# `BetaTracker` holds Beta(α, β) per prompt, starting at the prior Beta(1, 1) (uniform). After a group of G
# rewards r_j ∈ [0, 1]: α += Σ r_j, β += Σ (1 − r_j) — the conjugate update for binary rewards; a
# continuous reward of 0.7 counts as 0.7 of a success (`continuous="fractional"`, the default). Decay is
# switched off here (`global_decay = local_decay = 1`) to see the raw update.

# %%
tracker = BetaTracker(1, global_decay=1.0, local_decay=1.0)
groups = [[1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 0, 1], [0.5, 0.7, 0.2, 1.0]]
states = {"prior": (float(tracker.alpha[0]), float(tracker.beta[0]))}
rows = [{"after": "prior", "rewards": "", "alpha": 1.0, "beta": 1.0, "mean": 0.5}]
for t, g in enumerate(groups, 1):
    tracker.update([0], g, group_size=4)
    a, b = float(tracker.alpha[0]), float(tracker.beta[0])
    states[f"group {t}"] = (a, b)
    rows.append({"after": f"group {t}", "rewards": str(g), "alpha": a, "beta": b, "mean": a / (a + b)})
display_table = pd.DataFrame(rows)
display_table

# %%
viz.beta_densities(states)

# %% [markdown]
# ## 3 · Thompson sampling and the information-gain criterion
#
# To pick k prompts, draw p̃ ~ Beta(α, β) for each and take the k largest p̃(1−p̃) — the variance of a
# Bernoulli(p̃) reward, i.e. the expected within-group reward variance that GRPO's advantages and gradient
# scale with. The *draw* (not the posterior mean) is what keeps exploring prompts the tracker knows little
# about. We feed a tracker the groups from section 1 and look at one draw:

# %%
tracker = BetaTracker(n_probe, global_decay=1.0, local_decay=1.0)
tracker.update(list(range(n_probe)), scores.reshape(-1), group_size=G)
k = 8
score = tracker.scores(torch.Generator().manual_seed(1))
chosen = tracker.select(k, torch.Generator().manual_seed(1))  # same generator state -> the same draw
a, b = tracker.alpha, tracker.beta
sd = torch.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
viz.thompson_panel(tracker.p_mean, score, chosen, uncertainty=sd)

# %% [markdown]
# Over many draws, how often each prompt is chosen: prompts whose mean is near ½ are chosen nearly always,
# settled easy/hopeless ones rarely, and uncertain ones in between. `criterion="nonzero"` scores
# 1 − p̃^G − (1 − p̃)^G instead (the probability that the group is *not* all-equal); it ranks prompts the same.

# %%
gen = torch.Generator().manual_seed(0)
counts = torch.zeros(n_probe)
n_draws = 200
for _ in range(n_draws):
    counts[tracker.select(k, gen)] += 1
freq = pd.DataFrame({"posterior mean": tracker.p_mean.numpy(), "chosen fraction": (counts / n_draws).numpy(),
                     "posterior sd": sd.numpy()})
fig, ax = viz.figure(width=5, height=3.4)
sns.scatterplot(freq, x="posterior mean", y="chosen fraction", hue="posterior sd", palette="viridis", ax=ax)
ax.set_title(f"selection frequency over {n_draws} Thompson draws (k={k} of {n_probe})", fontsize=9)
fig

# %% [markdown]
# ## 4 · The two-scale decay
#
# The policy improves, so a group seen 50 steps ago says little about the prompt today. Evidence
# (α − α0, β − β0) is shrunk toward the prior on two clocks:
#
# * **global**, every training step, every prompt: `evidence *= global_decay` (slow);
# * **local**, per prompt: with `local_clock="visits"` (default) old evidence is multiplied by
#   `local_decay` each time the prompt gets a fresh group, so its newest group dominates; with
#   `local_clock="steps"` by `local_decay ** (steps since last seen)` when it is next seen.
#
# One prompt, a group of 8 passes at step 0, then one group (all failures: the policy got worse at it) every
# 10 steps; the posterior mean with no decay, global only, and both:

# %%
settings = {"no decay": dict(global_decay=1.0, local_decay=1.0),
            "global 0.98": dict(global_decay=0.98, local_decay=1.0),
            "global 0.98 + local 0.5 (visits)": dict(global_decay=0.98, local_decay=0.5),
            "global 0.98 + local 0.9 (steps)": dict(global_decay=0.98, local_decay=0.9, local_clock="steps")}
trace = []
for name, kw in settings.items():
    t = BetaTracker(1, **kw)
    for step in range(60):
        if step == 0:
            t.update([0], [1.0] * 8, group_size=8)
        elif step % 10 == 0:
            t.update([0], [0.0] * 8, group_size=8)
        trace.append({"setting": name, "step": step, "posterior mean": float(t.p_mean[0]),
                      "evidence α+β−2": float(t.alpha[0] + t.beta[0] - 2)})
        t.step()
trace = pd.DataFrame(trace)
fig, axes = viz.figure(2, 1, 4.6, 3.2)
sns.lineplot(trace, x="step", y="posterior mean", hue="setting", ax=axes[0], legend=False)
sns.lineplot(trace, x="step", y="evidence α+β−2", hue="setting", ax=axes[1])
axes[1].legend(fontsize=7)
fig

# %% [markdown]
# ## 5 · uniform vs dapo_filter vs vade
#
# `GRPOModule` takes the sampler by name (`pfkit.data.samplers`): **uniform** (plain GRPO), **dapo_filter**
# (roll out, drop all-equal groups, refill until k groups are kept — every dropped rollout is paid for) and
# **vade** (Thompson selection before rollout, nothing dropped). `pfkit demo vade` trains one run per sampler
# from the same policy, seed and prompts until the same **rollout budget** is spent, measuring the pass rate
# on the training prompts along the way. In Python that is `pfkit.demos.vade.run_comparison` (the settings
# below shrink the quick setting further so the notebook stays fast). Each sampler's run folder gets
# metrics.csv (mean reward, fraction of zero-variance groups, samples with a non-zero advantage, rollouts
# spent, per step), `difficulty.parquet` (α, β per prompt per step) and `rollouts.parquet`.
#
# The same from a terminal: `pfkit demo vade [--quick] --out runs/vade`, or one sampler at a time with
# `pfkit fit -c configs/grpo_codegen.yaml --model.init_args.sampler uniform|dapo_filter|vade`.

# %%
from pfkit.demos.vade import run_comparison

SAMPLERS = ["uniform", "dapo_filter", "vade"]
small = dict(n_train=16, n_val=8, prompts_per_step=4, group_size=G, steps=4, eval_every=2, eval_samples=1)
demo_dir = OUT / "demo"
results = run_comparison(seed=0, quick=QUICK, samplers=SAMPLERS, out=demo_dir, policy=POLICY,
                         **(small if QUICK else {}))
runs = {s: RunDir(demo_dir / s) for s in SAMPLERS}
metrics = {s: r.metrics() for s, r in runs.items()}
keys = ["steps", "rollouts_spent", "effective_samples", "effective_ratio", "frac_zero_var",
        "train_pass_rate_initial", "train_pass_rate", "heldout_pass_rate"]
pd.DataFrame({s: {k: results[s][k] for k in keys} for s in SAMPLERS}).round(3)

# %%
viz.curves(metrics, "train/rollouts_spent",
           ["train/frac_zero_var", "train/effective_total", "train/reward_generated"], hue_name="sampler",
           titles=["zero-variance groups per step", "useful samples so far", "mean reward of rollouts"])

# %% [markdown]
# The x-axis is **rollouts spent**, the cost that matters: `dapo_filter` reaches its k useful groups per step
# by paying for the dropped ones; `vade` should spend fewer rollouts per useful sample. With the embedded
# policy in quick mode (a few steps on a few prompts) the curves are a smoke test; the kit's benchmark
# (`benchmarks/vade_efficiency.py`) measures the rollouts-to-target ratio over seeds.
#
# What the tracker believed at the end of the `vade` run, from `difficulty.parquet`:

# %%
diff = runs["vade"].read("difficulty")
last = diff[diff["step"] == diff["step"].max()]
print(f"{diff['prompt_id'].nunique()} prompts over {diff['step'].nunique()} steps; last step:")
last.sort_values("p_mean")[["prompt_id", "alpha", "beta", "p_mean", "selected", "successes", "trials"]].head(10)

# %% [markdown]
# ## 6 · The difficulty inspector
#
# Posteriors per prompt over time, which prompts each step selected, and zero-variance fractions:
#
# ```bash
# pfkit inspect difficulty runs/notebooks/02_vade_grpo/demo/vade      # or: python apps/difficulty.py RUN_DIR
# ```
#
# `preview(name, run_dir)` builds the same `gradio.Blocks` app without serving it; `LAUNCH_INSPECTOR = True`
# serves it from this kernel (non-blocking) — stop it with `app.close()`.

# %%
from pfkit.inspect import preview

app = preview("difficulty", runs["vade"].path, launch=LAUNCH_INSPECTOR)  # a gradio.Blocks; served only with LAUNCH_INSPECTOR
if LAUNCH_INSPECTOR:
    app.close()  # remove this line to keep it running while you explore

# %% [markdown]
# ## Summary figures
#
# Per sampler: the training-prompt pass rate and the useful (non-zero-advantage) samples against rollouts
# spent, and the posterior means of the `vade` run's prompts over training.

# %%
curve = pd.DataFrame([{"sampler": s, "rollouts spent": r, "train pass rate": p}
                      for s in SAMPLERS for r, p in results[s]["curve"]])
fig, axes = viz.figure(3, 1, 4.4, 3.4)
sns.lineplot(curve, x="rollouts spent", y="train pass rate", hue="sampler", marker="o", ax=axes[0])
axes[0].set_title("pass rate on the training prompts", fontsize=9)
for s, m in metrics.items():  # effective_total is logged once a step has kept a group
    d = m.reindex(columns=["train/rollouts_spent", "train/effective_total"]).dropna()
    axes[1].plot(d["train/rollouts_spent"], d["train/effective_total"], marker="o", ms=3, label=s)
axes[1].set_xlabel("rollouts spent")
axes[1].set_ylabel("useful samples (non-zero advantage)")
axes[1].legend(fontsize=8)
sns.lineplot(diff, x="step", y="p_mean", units="prompt_id", estimator=None, lw=0.6, alpha=0.6, ax=axes[2])
axes[2].set_title("vade: posterior mean per prompt", fontsize=9)
fig
