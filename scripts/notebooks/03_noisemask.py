# %% [markdown]
# # 3 · Noise-mask REINFORCE pretraining
#
# Yavuz & Yang, *Policy Gradient-Driven Noise Mask* (ICPR 2024, arXiv 2406.14568). A light **mask policy**
# looks at a medical image and outputs, for every patch of a grid, the two concentrations of a
# **Beta distribution**; a mask is sampled from them, upsampled and blurred, and multiplied into the image
# before the classifier sees it. Classifier and policy train together from *one* loss: the policy is
# rewarded through REINFORCE for masks that make the classifier's job hard in a useful way, which
# regularises the classifier. The resulting **"heated"** classifier is then fine-tuned on clean images.
#
# This notebook walks through:
#
# 1. the embedded synthetic multi-modal, multi-organ image set, its held-out organ × modality pairings and
#    its held-out "unseen" organs;
# 2. the Beta mask policy and what its masks look like;
# 3. REINFORCE in the kit's forms: `faithful` (the official code's loss), its learning-rate-matched
#    variant, and `per_sample` (the textbook estimator with a baseline);
# 4. **the seeded study** (`studies/noisemask.yaml`): baseline, random-mask control, faithful, per_sample
#    and lr-matched arms × 5 seeds, with 95% intervals and paired differences, read from the stored table;
# 5. what the policy learned: Beta entropy, the reward curve, and whether masks depend on class or modality;
# 6. unseen concepts: few-shot macro-F1 by linear probe and by short fine-tuning;
# 7. the real-data arm (PneumoniaMNIST, 3 seeds) and the noise-mask inspector.
#
# **Data.** `pfkit/assets/synthetic_medical.npz` ships with the kit (`python scripts/make_synthetic_images.py`
# rebuilds it). The stored study tables are `studies/results/noisemask*.csv`, written by
# `pfkit study -c studies/noisemask.yaml` (and `..._pneumonia.yaml`). `QUICK = True` (default; what CI
# runs) re-runs the study's `--quick` grid (one seed, one epoch, small subsets: a smoke test, not a
# result) to show where every figure comes from; `PFKIT_NOTEBOOK_QUICK=0` re-runs the full study into
# this notebook's run folder (about 40 minutes on 2 cores; resumable) and shows that instead.

# %% [parameters]
import os

QUICK = os.environ.get("PFKIT_NOTEBOOK_QUICK", "1") != "0"
RUNS = os.environ.get("PFKIT_NOTEBOOK_RUNS", "../runs/notebooks")  # where this notebook's run folders go
LAUNCH_INSPECTOR = os.environ.get("PFKIT_NOTEBOOK_LAUNCH", "0") == "1"  # start (and stop) the Gradio app here

# %%
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display

import pfkit
from pfkit import viz
from pfkit.cli import main as pfkit_main
from pfkit.data.images import load_npz, resolve
from pfkit.runs import RunDir

viz.theme()
ROOT = Path(pfkit.__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PFKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
PNEUMONIA = SHARED / "medmnist" / "pneumoniamnist.npz"
OUT = Path(RUNS).resolve() / "03_noisemask"
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(min(4, os.cpu_count() or 1))
print("quick:", QUICK, "| runs:", OUT)
print("PneumoniaMNIST:", PNEUMONIA if PNEUMONIA.is_file() else f"not found at {PNEUMONIA} (section 7 is skipped)")

# %% [markdown]
# ## 1 · The synthetic multi-modal, multi-organ set
#
# 28×28 grey images of organ-like shapes rendered in three "modalities" (CT, MRI, ultrasound), each with its
# own intensity profile, noise and artefacts. Six organs are the training classes; four more are held out
# as **unseen concepts** for the few-shot evaluation. Each training organ also never appears in one
# modality (`held_out_modality(organ) = organ % 3`): those pairings form `shift_test`, a distribution
# shift the classifier is tested on directly. The file has the MedMNIST layout
# (`{train,val,test}_{images,labels}`) plus `unseen_*` and `shift_test` groups, so every loader and module
# takes a real MedMNIST npz unchanged.

# %%
data = load_npz(resolve("synthetic"))
names = list(data.extras["class_names"])
unseen_names = list(data.extras["unseen_class_names"])
modalities = list(data.extras["modality_names"])
pd.DataFrame([{"split": s, "images": len(data.labels[s]), "classes": len(np.unique(data.labels[s])),
               "shape": tuple(data.images[s].shape[1:])} for s in data.images])

# %%
viz.image_grid(data.images["train"], data.labels["train"], names, per_class=8)

# %% [markdown]
# The same organ across modalities (rows: CT, MRI, US) — the classifier must learn shape, not intensity:

# %%
from pfkit.data.images import held_out_modality

pd.crosstab(pd.Series(np.array(names)[data.labels["train"]], name="train organ"),
            pd.Series(np.array(modalities)[data.extras["train_modality"]], name="modality")).assign(
    **{"held out (shift_test)": [modalities[held_out_modality(names.index(n))] for n in sorted(names)]})

# %%
organ = 0
sel = data.labels["train"] == organ
viz.image_grid(data.images["train"][sel], data.extras["train_modality"][sel],
               [f"{names[organ]} · {m}" for m in modalities], per_class=8)

# %% [markdown]
# And the unseen concepts, never shown during pretraining:

# %%
viz.image_grid(data.images["unseen_train"], data.labels["unseen_train"], unseen_names, per_class=8)

# %% [markdown]
# ## 2 · The Beta mask policy
#
# Each patch's mask value is a draw from Beta(α, β). The shape of the Beta is the whole story: mass near 1
# leaves the patch almost untouched, mass near 0 wipes it out (pulls it to the dataset mean, since images are
# normalised), α, β < 1 gives all-or-nothing masks, large α, β a narrow band:

# %%
viz.beta_densities({"mild": (6.0, 1.5), "uniform": (1.0, 1.0), "strong": (1.5, 6.0),
                    "all-or-nothing": (0.4, 0.4), "narrow": (20.0, 12.0)})

# %% [markdown]
# `pfkit.noise.MaskPolicy` is the official `MaskGenerator`: a small ResNet feature extractor and two MLP heads
# give log α and log β for each of the `grid × grid` patches, mixed 90/10 with a running-average "base"
# (which is also the unconditional mask distribution used at validation). A mask is sampled with
# `sample_mask` (no reparameterisation: the policy learns only through log-probabilities, i.e. REINFORCE),
# then `apply_mask` upsamples it (nearest), blurs it (Gaussian) and multiplies it into the image.
#
# An *untrained* policy, on six validation images:

# %%
from pfkit.noise import Classifier, MaskPolicy, RewardBaseline, apply_mask, reinforce_loss, sample_mask

torch.manual_seed(0)
mean, std = float(data.images["train"].mean()), float(data.images["train"].std())
x = torch.as_tensor((data.images["val"][:16] - mean) / std)
y = torch.as_tensor(data.labels["val"][:16])
policy = MaskPolicy(grid=8, in_channels=1)
policy.eval()  # BatchNorm running statistics; in training mode the base also updates
with torch.no_grad():
    log_a, log_b = policy(x)
mask, logp, dist = sample_mask(log_a, log_b, seed=0)
masked, pixel_mask = apply_mask(x, mask, sigma=1.0, kernel_size=5)
print("log α, log β:", tuple(log_a.shape), "| mask per patch:", tuple(mask.shape), "| pixel mask:",
      tuple(pixel_mask.shape), "| log-density per patch:", tuple(logp.shape))
e_mask = (log_a.exp() / (log_a.exp() + log_b.exp())).numpy()
viz.mask_panel(x.numpy() * std + mean, e_mask, pixel_mask[:, 0].numpy(),
               (masked.numpy() * std + mean).clip(0, 1), titles=[names[i] for i in y[:6]])

# %% [markdown]
# ## 3 · REINFORCE, three ways
#
# The reward of a mask is how hard it makes classification: the classifier's cross-entropy on the masked
# image, `CE_i`. The kit implements these losses (`pfkit.noise.reinforce`), each one backward pass for the
# classifier *and* the policy:
#
# * **`faithful`** — the official code: `loss = L̄ × mean_i CE_i` with `L̄ = mean_i logsumexp_j log p(m_ij)`.
#   The policy's gradient is the batch CE times ∇L̄ (credit per *batch*, no baseline); the classifier's
#   gradient is ∇CE scaled by L̄ ≈ log(g²) ≈ 4 and growing: **its learning rate is confounded with the mask**.
# * **`faithful` + `lr_match`** — `loss = CE + sg(CE)·(L̄ − sg(L̄))`: the same policy gradient, but the
#   classifier gets plain ∇CE, as the baseline does. (Dividing the faithful loss by a detached L̄ would
#   also fix the classifier, but shrink the policy's step by 1/L̄ as well.)
# * **`per_sample`** — textbook REINFORCE: `loss = mean_i CE_i − mean_i A_i · Σ_j log p(m_ij)`, with reward
#   `−CE_i`, advantage `A_i = −CE_i − b` against a moving-average baseline `b`; the classifier sees plain CE.
#
# Same batch, same mask, each loss, and where the gradients go (the classifier's gradient norm of
# `faithful` is L̄ times the other two):

# %%
clf = Classifier(data.num_classes, 1, widths=(8, 16, 32, 64), stem_stride=2)
policy.train()
rows = []
for label, mode, kw in (("faithful", "faithful", {}), ("lr_matched", "faithful", {"lr_match": True}),
                        ("per_sample", "per_sample", {})):
    torch.manual_seed(0)
    clf.zero_grad()
    policy.zero_grad()
    la, lb = policy(x)
    m, lp, _ = sample_mask(la, lb, seed=0)
    xm, _ = apply_mask(x, m, sigma=1.0, kernel_size=5)
    ce = torch.nn.functional.cross_entropy(clf(xm), y, reduction="none")
    loss, stats = reinforce_loss(mode, lp, ce, baseline=RewardBaseline(0.9), **kw)
    loss.backward()
    gnorm = lambda mod: float(torch.sqrt(sum((p.grad**2).sum() for p in mod.parameters() if p.grad is not None)))  # noqa: E731
    rows.append({"loss": label, "value": float(loss), "mean CE": float(ce.mean()),
                 "|∇ classifier|": gnorm(clf), "|∇ policy|": gnorm(policy),
                 **{k: float(v) for k, v in stats.items()}})
pd.DataFrame(rows).set_index("loss").round(4)

# %% [markdown]
# ## 4 · The study: arms × seeds
#
# `studies/noisemask.yaml` states the paper's prediction and runs five arms, each paired by seed with the
# baseline (the same seed = the same 480 training images, data order and initialisation):
#
# | arm | stage 1 (6 epochs) | stage 2 (3 epochs) |
# |---|---|---|
# | `baseline` | — plain CE, clean images, 9 epochs, lr 0.1 | |
# | `random_mask` | the same Beta noise from a **frozen, untrained** policy (faithful loss) | fine-tune, clean |
# | `faithful` | official loss | fine-tune, clean |
# | `per_sample` | textbook REINFORCE | fine-tune, clean |
# | `lr_matched` | faithful, classifier gradient plain ∇CE | fine-tune, clean |
#
# StepLR decays at 1/3 and 2/3 of each stage-1/baseline run (the paper: 30 of 90 epochs); fine-tuning is
# lr 1e-3 with a 2-epoch warm-up. Metrics: held-in test (600 images) accuracy, macro precision/recall/F1,
# AUC, balanced accuracy; the same on `shift_test` (600); unseen-organ macro-F1 at n = 16…256 by probe
# and by fine-tuning (600 test images). The committed table is the full study; the cell after it
# re-runs the `--quick` grid (QUICK) or the full grid (not QUICK) through the same command.

# %%
from pfkit.study import load_study, summarize

STUDY = ROOT / "studies" / "noisemask.yaml"
STUDY_PN = ROOT / "studies" / "noisemask_pneumonia.yaml"
study = load_study(STUDY)
print("prediction (stated before running):", study.prediction)
stored = pd.read_csv(ROOT / "studies" / "results" / "noisemask.csv")
print(f"stored table: {len(stored)} runs, arms {list(stored.arm.unique())}, seeds {sorted(stored.seed.unique())}, "
      f"evaluation images per run: {sorted(stored.n_eval.unique())}")


def arm_table(results: pd.DataFrame, st, metrics) -> pd.DataFrame:
    """Mean [95% CI] per arm and the paired difference vs the baseline (Student t over seeds)."""
    st.metrics = list(metrics)
    per_arm, paired = summarize(results, st)
    per_arm["cell"] = per_arm.apply(lambda r: f"{r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1)
    tab = per_arm.pivot(index="arm", columns="metric", values="cell").reindex(index=[a.name for a in st.arms])
    if len(paired):
        paired["cell"] = paired.apply(lambda r: f"{r['mean_diff']:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] p={r.p:.2g}",
                                      axis=1)
        diff = paired.pivot(index="arm", columns="metric", values="cell")
        tab = tab.join(diff.add_prefix("Δ vs baseline: "))
    return tab[[c for m in metrics for c in (m, f"Δ vs baseline: {m}") if c in tab.columns]]


HELD_IN = ["test_f1", "test_acc", "test_balanced_acc", "test_auc", "test_precision"]
arm_table(stored, study, HELD_IN)

# %% [markdown]
# **Is it the policy?** The same metrics paired by seed against the `random_mask` control instead of the
# baseline: a policy that learned something useful should beat untrained Beta noise.

# %%
import copy

vs_random = copy.deepcopy(study)
vs_random.baseline = "random_mask"
vs_random.arms = [a for a in study.arms if a.name != "baseline"]
arm_table(stored, vs_random, ["test_f1", "shift_f1", "probe_f1_n64", "ft_f1_n64"]).rename(
    columns=lambda c: c.replace("vs baseline", "vs random_mask"))

# %% [markdown]
# The same study, re-run here (QUICK: the YAML's `quick:` sizes, one seed — the intervals are undefined and
# the numbers mean nothing; `PFKIT_NOTEBOOK_QUICK=0`: the full grid, which then replaces the stored table in
# every cell below):

# %%
study_out = OUT / ("study_quick" if QUICK else "study")
cmd = ["study", "-c", str(STUDY), "--out", str(study_out), "--workers", "1"] + (["--quick"] if QUICK else [])
print("pfkit " + " ".join(cmd))
assert pfkit_main(cmd) == 0
rerun = pd.read_parquet(study_out / "results.parquet")
results = stored if QUICK else rerun
rerun[["arm", "seed", "n_eval", "test_acc", "test_f1", "shift_acc", "wall_s"]].round(3)

# %% [markdown]
# Held-in and shifted test macro-F1 per arm: one point per seed, and the mean with its 95% interval.
# `shift_test` shows the seen organs in the modality each never had in training.

# %%
long = results.melt(id_vars=["arm", "seed"], value_vars=["test_f1", "shift_f1"], var_name="test set",
                     value_name="macro-F1")
fig, axes = viz.figure(2, 1, 5.2, 3.6)
for ax, (name, g) in zip(axes, long.groupby("test set", sort=False)):
    sns.pointplot(g, x="arm", y="macro-F1", errorbar=("ci", 95), linestyle="none", ax=ax, color="k")
    sns.stripplot(g, x="arm", y="macro-F1", hue="seed", ax=ax, legend=False, alpha=0.6)
    ax.set_title(f"{name} (n_eval per run: {int(results['n_eval' if name == 'test_f1' else 'n_shift'].iloc[0])})")
    ax.tick_params(axis="x", labelsize=8, rotation=20)
fig

# %%
arm_table(results, study, ["shift_f1", "shift_acc", "shift_balanced_acc", "heated_test_acc"])

# %% [markdown]
# ## 5 · What the policy learned
#
# Every pretraining epoch the module summarises the policy's masks on 256 fixed validation images
# (`RUN_DIR/mask_stats.parquet`, `val/mask_*` in metrics.csv): the mean per-patch **Beta entropy**
# (`torch.distributions.Beta.entropy`; 0 = uniform Beta(1, 1), negative = sharper), and how much of the
# expected masks' variance lies **between classes / modalities** (η²), with a permutation p-value
# (`scipy.stats.permutation_test`, 999 relabellings). The frozen `random_mask` policy is the chance level:
# an untrained feature extractor already gives image-dependent masks, so a trained policy has to beat
# *its* η², not zero.

# %%
MASK = ["mask_entropy", "mask_class_eta2", "mask_class_p", "mask_modality_eta2", "mask_modality_p", "mask_image_std"]
mask_arms = results[results.arm != "baseline"]
(mask_arms.groupby("arm", sort=False)[[c for c in MASK if c in mask_arms]].agg(["mean", "std"]).round(4)
 .assign(seeds=mask_arms.groupby("arm", sort=False).seed.nunique()))

# %% [markdown]
# Per epoch, from the run folders of the study re-run above (`python -m pfkit.demos.noisemask epochs
# STUDY_DIR OUT.csv` writes the same table; the full study's is `studies/results/noisemask_epochs.csv`):
# the policy's reward (−CE on masked images), its Beta entropy, and the class dependence of its masks.

# %%
from pfkit.demos.noisemask import epoch_table

stored_epochs = ROOT / "studies" / "results" / "noisemask_epochs.csv"
epochs = epoch_table(study_out)
if QUICK and stored_epochs.is_file():
    epochs = pd.read_csv(stored_epochs)  # the full study's curves (the quick grid has one epoch)
print(f"{len(epochs)} rows: arms {list(epochs.arm.unique())}, seeds {sorted(epochs.seed.unique())}, "
      f"epochs {sorted(epochs.epoch.unique())}")
fig, axes = viz.figure(3, 1, 4.2, 3.2)
for ax, (col, title) in zip(axes, [("train_reward", "policy reward −CE (train, per epoch)"),
                                   ("mask_entropy", "Beta entropy (val panel)"),
                                   ("mask_class_eta2", "η² of E[m] by class")]):
    if col in epochs:
        sns.lineplot(epochs, x="epoch", y=col, hue="arm", errorbar=("ci", 95), marker="o", ax=ax)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
fig

# %% [markdown]
# ## 6 · Unseen concepts: few-shot macro-F1
#
# The paper's claim is that the heated model's *features* transfer better. Two measurements on the four
# **unseen** organs (never seen in training), n = 16…256 labelled images (stratified draws):
#
# * **probe** — the final backbone frozen, a logistic-regression probe (`pfkit.noise.fewshot.few_shot`),
#   mean over 3 draws per seed;
# * **fine-tune** — the whole network briefly fine-tuned with a new head (`finetune_curve`: AdamW 1e-3,
#   30 steps).
#
# Mean and 95% interval across the 5 seeds (the CI is over pretraining seeds, not only over draws).

# %%
SHOTS = [16, 32, 64, 128, 256]
fs = []
for ev in ("probe", "ft"):
    for n in SHOTS:
        col = f"{ev}_f1_n{n}"
        if col in results:
            fs += [{"arm": r.arm, "seed": r.seed, "eval": "probe" if ev == "probe" else "fine-tune", "n": n,
                    "macro_f1": getattr(r, col)} for r in results.itertuples()]
fs = pd.DataFrame(fs).dropna()
fig, axes = viz.figure(2, 1, 5.0, 3.6)
for ax, (ev, g) in zip(axes, fs.groupby("eval", sort=False)):
    sns.lineplot(g, x="n", y="macro_f1", hue="arm", marker="o", errorbar=("ci", 95), ax=ax)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled samples of the unseen organs")
    ax.set_title(f"unseen concepts: {ev} macro-F1 ({results.n_unseen_test.iloc[0]:.0f} test images)", fontsize=9)
    ax.legend(fontsize=7)
fig

# %%
arm_table(results, study, [f"{ev}_f1_n{n}" for ev in ("probe", "ft") for n in (16, 64, 256)])

# %% [markdown]
# ## 7 · Real data: PneumoniaMNIST, and the inspector
#
# `studies/noisemask_pneumonia.yaml`: the same arms on 480 training images of PneumoniaMNIST (2 classes;
# 468 test images in the shared, class-balanced copy), 3 seeds. The stored table is shown; it needs no
# shared data. Re-running it needs `pneumoniamnist.npz` from the shared data folder (`PFKIT_SHARED_DATA`),
# and is left to the command line.

# %%
pn_table = ROOT / "studies" / "results" / "noisemask_pneumonia.csv"
if pn_table.is_file():
    pn = pd.read_csv(pn_table)
    print(f"{len(pn)} runs, seeds {sorted(pn.seed.unique())}, evaluation images per run: {sorted(pn.n_eval.unique())}")
    display(arm_table(pn, load_study(STUDY_PN), ["test_f1", "test_acc", "test_balanced_acc", "test_auc"]))
else:
    print(f"no stored table at {pn_table}: run `pfkit study -c {STUDY_PN.relative_to(ROOT)} --workers 1`")
if PNEUMONIA.is_file():
    pneu = load_npz(PNEUMONIA)
    print({s: len(v) for s, v in pneu.labels.items()}, "| label balance (train):",
          np.bincount(pneu.labels["train"]).tolist())
    display(viz.image_grid(pneu.images["train"], pneu.labels["train"], ["normal", "pneumonia"], per_class=8))

# %% [markdown]
# The noise-mask inspector reads a pretraining run folder: the panel's α/β maps, masks redrawn with any
# seed, per-class average masks, the accuracy curves, and the per-epoch mask statistics of section 5:
#
# ```bash
# pfkit inspect noisemask runs/notebooks/03_noisemask/study_quick/faithful/seed_0/pretrain
# ```
#
# In Python, `preview(name, run_dir)` returns the `gradio.Blocks` app without starting a server. Set
# `LAUNCH_INSPECTOR = True` to serve it from this kernel (non-blocking; the link is printed) and stop it with
# `app.close()`.

# %%
from pfkit.inspect import preview

pre = study_out / "faithful" / "seed_0" / "pretrain"
app = preview("noisemask", pre, launch=LAUNCH_INSPECTOR)  # a gradio.Blocks; served only with LAUNCH_INSPECTOR
if LAUNCH_INSPECTOR:
    app.close()  # remove this line to keep it running while you explore
