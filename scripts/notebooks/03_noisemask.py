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
# 1. the embedded synthetic multi-modal, multi-organ image set (and its held-out "unseen" organs);
# 2. the Beta mask policy and what its masks look like;
# 3. REINFORCE in the two modes the kit implements: `faithful` (the official code's loss) and
#    `per_sample` (the textbook estimator with a baseline);
# 4. pretrain → fine-tune against a plain baseline;
# 5. unseen-concept few-shot evaluation (linear probe on frozen features);
# 6. opening the noise-mask inspector on the run.
#
# **Data.** Everything runs on `data/synthetic_medical.npz`, shipped with the kit. The last section also
# uses PneumoniaMNIST from `../shared/data/medmnist/pneumoniamnist.npz` (or `PFKIT_SHARED_DATA`) when it is
# there; without it that section says so and is skipped. `QUICK = True` (default; what CI runs) trains for
# one epoch on small subsets, so the numbers are a smoke test, not a result: run with
# `PFKIT_NOTEBOOK_QUICK=0` (several minutes) for the real comparison.

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
# as **unseen concepts** for the few-shot evaluation. The file has the MedMNIST layout
# (`{train,val,test}_{images,labels}`) plus `unseen_*` splits, so every loader and module takes a real
# MedMNIST npz unchanged.

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
# ## 3 · REINFORCE, two ways
#
# The reward of a mask is how hard it makes classification: the classifier's cross-entropy on the masked
# image, `CE_i`. The kit implements two losses (`pfkit.noise.reinforce`), each one backward pass for the
# classifier *and* the policy:
#
# * **`faithful`** — the official code: `loss = mean_i logsumexp_j log p(m_ij) × mean_i CE_i`. The policy's
#   gradient is the batch CE times ∇ of a soft-max over the patch log-densities (credit is per *batch*, and
#   per the patch the policy is most sure of); the classifier's gradient is its CE scaled by that
#   log-density term.
# * **`per_sample`** — textbook REINFORCE: `loss = mean_i CE_i − mean_i A_i · Σ_j log p(m_ij)`, with reward
#   `−CE_i`, advantage `A_i = −CE_i − b` against a moving-average baseline `b`; the classifier sees plain CE.
#
# Same batch, same mask, both losses, and where their gradients go:

# %%
clf = Classifier(data.num_classes, 1, widths=(16, 32, 64, 128))
policy.train()
rows = []
for mode in ("faithful", "per_sample"):
    clf.zero_grad()
    policy.zero_grad()
    la, lb = policy(x)
    m, lp, _ = sample_mask(la, lb, seed=0)
    xm, _ = apply_mask(x, m, sigma=1.0, kernel_size=5)
    ce = torch.nn.functional.cross_entropy(clf(xm), y, reduction="none")
    loss, stats = reinforce_loss(mode, lp, ce, baseline=RewardBaseline(0.9))
    loss.backward()
    gnorm = lambda mod: float(torch.sqrt(sum((p.grad**2).sum() for p in mod.parameters() if p.grad is not None)))  # noqa: E731
    rows.append({"mode": mode, "loss": float(loss), "mean CE": float(ce.mean()),
                 "|∇ classifier|": gnorm(clf), "|∇ policy|": gnorm(policy),
                 **{k: float(v) for k, v in stats.items()}})
pd.DataFrame(rows).set_index("mode").round(4)

# %% [markdown]
# Both are trained by `NoiseMaskPretrain` (`--model.init_args.mode faithful|per_sample`). A short run of
# each, through the same `pfkit fit` entry point as the command line, with the shipped config:

# %%
def fit_pretrain(mode: str) -> RunDir:
    run_dir = OUT / f"pretrain_{mode}"
    pfkit_main(["fit", "-c", str(ROOT / "configs" / "noisemask_pretrain.yaml"), "--run_dir", str(run_dir),
                "--model.init_args.mode", mode, "--trainer.max_epochs", "1" if QUICK else "4",
                "--trainer.limit_train_batches", "6" if QUICK else "1.0",
                "--trainer.limit_val_batches", "2" if QUICK else "1.0",
                "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false",
                "--data.init_args.train_subset", "600" if QUICK else "3000"])
    return RunDir(run_dir)


mode_runs = {mode: fit_pretrain(mode) for mode in ("faithful", "per_sample")}
viz.curves({mode: r.metrics() for mode, r in mode_runs.items()}, "step", ["train/ce_step", "train/loss_step"],
           hue_name="mode", titles=["classifier CE on masked images", "training loss"])

# %% [markdown]
# ## 4 · Pretrain → fine-tune vs baseline
#
# `pfkit demo noisemask` runs the paper's protocol end to end: a **baseline** classifier on clean images,
# the **heated** classifier from noise-mask pretraining, and the heated classifier **fine-tuned** on clean
# images (lr 1e-3, warm-up), each scored on the test split; then the few-shot probe of section 5.
# The baseline trains for as many epochs as pretraining + fine-tuning together.

# %%
demo_dir = OUT / "demo"
demo_args = ["demo", "noisemask", "--out", str(demo_dir), "--mode", "faithful"]
demo_args += ["--quick", "--epochs", "1", "--finetune-epochs", "1"] if QUICK else []
print("pfkit " + " ".join(demo_args))
pfkit_main(demo_args)
summary = RunDir(demo_dir).read_summary()
res = summary["results"][0]
test = pd.DataFrame(res["test"]).T.rename_axis("model")
test["train seconds"] = [res["seconds"]["baseline"], res["seconds"]["pretrain"],
                         res["seconds"]["pretrain"] + res["seconds"]["finetune"]]
test.round(3)

# %% [markdown]
# What the policy learned to do: the masks of the fixed validation panel after each pretraining epoch
# (written to `RUN_DIR/masks/epoch_XXX.npz` by the module; the inspector below reads the same files).

# %%
pre = RunDir(demo_dir / "synthetic" / "pretrain")
epoch = pre.mask_epochs()[-1]
panel = pre.load_masks(epoch)
print(f"epoch {epoch}:", {k: v.shape for k, v in panel.items()})
viz.mask_panel(panel["image"], panel["alpha"] / (panel["alpha"] + panel["beta"]), panel["pixel_mask"],
               panel["masked"], titles=[f"{names[int(c)]} → {names[int(p)]}" for c, p in zip(panel["label"], panel["pred"])])

# %% [markdown]
# ## 5 · Unseen concepts: few-shot macro-F1
#
# The paper's claim is that the heated model's *features* transfer better. For each initialisation (random,
# baseline, heated, heated + fine-tuned) the backbone is frozen and a logistic-regression probe
# (`pfkit.noise.fewshot.few_shot`) is fit on n = 16…256 labelled images of the four **unseen** organs, then
# scored by macro-F1 on their test split, over several random draws of the n samples.

# %%
fewshot = pd.read_csv(demo_dir / "fewshot.csv")
fewshot.pivot_table(index="init", columns="n", values="macro_f1", aggfunc="mean").round(3)

# %% [markdown]
# ## 6 · The noise-mask inspector
#
# Browse the panel's α/β maps, resample masks with another seed or blur, and follow accuracy over epochs:
#
# ```bash
# pfkit inspect noisemask runs/notebooks/03_noisemask/demo/synthetic/pretrain   # or: python apps/noisemask.py RUN_DIR
# ```
#
# In Python, `preview(name, run_dir)` returns the `gradio.Blocks` app without starting a server. Set
# `LAUNCH_INSPECTOR = True` to serve it from this kernel (non-blocking; the link is printed) and stop it with
# `app.close()`.

# %%
from pfkit.inspect import preview

app = preview("noisemask", pre.path, launch=LAUNCH_INSPECTOR)  # a gradio.Blocks; served only with LAUNCH_INSPECTOR
if LAUNCH_INSPECTOR:
    app.close()  # remove this line to keep it running while you explore

# %% [markdown]
# ## 7 · Real data: PneumoniaMNIST
#
# The same modules take any MedMNIST-format npz (`--data.init_args.path FILE` in a config,
# `pfkit demo noisemask --data FILE`). This section needs `pneumoniamnist.npz` from the shared data folder
# and is skipped without it; in quick mode it only looks at the data.

# %%
if not PNEUMONIA.is_file():
    print(f"skipped: {PNEUMONIA} not found (set PFKIT_SHARED_DATA to the folder that holds medmnist/).")
    pneu = None
else:
    pneu = load_npz(PNEUMONIA)
    print({s: len(v) for s, v in pneu.labels.items()}, "| classes:", pneu.num_classes,
          "| label balance (train):", np.bincount(pneu.labels["train"]).tolist())
    display(viz.image_grid(pneu.images["train"], pneu.labels["train"], ["normal", "pneumonia"], per_class=8))
    if not QUICK:
        pfkit_main(["demo", "noisemask", "--out", str(OUT / "demo_pneumonia"), "--data", str(PNEUMONIA)])
        print(RunDir(OUT / "demo_pneumonia").read_summary()["table"])

# %% [markdown]
# ## Summary figures
#
# Held-in test accuracy of the three models, and few-shot macro-F1 on the unseen organs per initialisation
# (mean and 95% interval over draws). In quick mode these come from one-epoch runs on small subsets:
# rerun with `QUICK = False` before reading anything into them.

# %%
fig, axes = viz.figure(2, 1, 5.0, 3.6)
acc = test.reset_index()
sns.barplot(acc, x="model", y="acc", hue="model", ax=axes[0], legend=False)
axes[0].set_ylim(0, 1)
axes[0].set_title("held-in organs: test accuracy")
axes[0].tick_params(axis="x", labelsize=8)
sns.lineplot(fewshot, x="n", y="macro_f1", hue="init", marker="o", errorbar=("ci", 95), ax=axes[1])
axes[1].set_xscale("log", base=2)
axes[1].set_xlabel("labelled samples of the unseen organs")
axes[1].set_title("unseen concepts: few-shot macro-F1")
fig
