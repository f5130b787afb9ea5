"""Noise-mask controls and measurements (issue #17): the lr-matched loss, the frozen random-mask policy, the
blur against torchvision's algorithm on a real image, base mixing computed without the module's heads,
the paper's metrics, mask statistics, weight averaging, the fine-tuning curve and the study job."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from pfkit.data.images import SYNTHETIC_FILE, ImageNpzDataModule, load_npz, write_synthetic
from pfkit.modules.noisemask import NoiseMaskPretrain, PlainClassifier
from pfkit.noise import MaskPolicy, faithful_loss, reinforce_loss
from pfkit.noise.fewshot import finetune_curve
from pfkit.noise.mask import upsample_blur
from pfkit.noise.metrics import classification_metrics, eta_squared, group_dependence

TINY = dict(widths=(4, 8, 8, 8), policy_widths=(4, 4, 4, 4), policy_hidden=8, grid=4)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "tiny.npz", size=16, seed=0, n_train=32, n_val=24,
                           n_test=8, n_unseen_train=16, n_unseen_test=8, n_shift_test=8)


def _trainer(tmp_path, epochs=1, callbacks=()):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    return Trainer(max_epochs=epochs, logger=CSVLogger(str(tmp_path), name="", version=""), enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, accelerator="cpu",
                   devices=1, callbacks=list(callbacks))


# ------------------------------------------------------------------------------------- lr-matched loss
def test_lr_matched_loss_gradients_hand_computed():
    logp = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]], requires_grad=True)
    ce = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = faithful_loss(logp, ce, lr_match=True)
    assert loss.item() == pytest.approx(2.0)  # value = mean CE
    loss.backward()
    # classifier side: d loss / d ce_i = 1/B, exactly plain mean CE (the faithful loss gives mean(L)/B)
    torch.testing.assert_close(ce.grad, torch.tensor([0.5, 0.5]))
    # policy side: mean CE * d mean_i logsumexp_j logp_ij = 2.0 * softmax(logp_i)_j / B, faithful's gradient
    lp = logp.detach().numpy()
    soft = np.exp(lp) / np.exp(lp).sum(1, keepdims=True)
    np.testing.assert_allclose(logp.grad.numpy(), 2.0 * soft / 2, rtol=1e-6)
    logp2, ce2 = logp.detach().clone().requires_grad_(), ce.detach().clone().requires_grad_()
    faithful_loss(logp2, ce2).backward()
    lse = np.log(np.exp(lp).sum(1)).mean()
    torch.testing.assert_close(ce2.grad, torch.full((2,), float(lse) / 2))
    torch.testing.assert_close(logp2.grad, logp.grad)  # same policy gradient in both
    with pytest.raises(ValueError, match="lr_match"):
        NoiseMaskPretrain(mode="per_sample", lr_match=True)


def test_lr_matched_classifier_step_equals_the_plain_baseline_step():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    logp = torch.randn(8, 4, requires_grad=True)  # stands in for the policy's mask log-densities
    ce = F.cross_entropy(net(x), y, reduction="none")
    reinforce_loss("faithful", logp, ce, lr_match=True)[0].backward()
    matched = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    for a, b in zip(matched, net.parameters()):
        torch.testing.assert_close(a, b.grad)
    net.zero_grad()
    lse = torch.logsumexp(logp.detach(), 1).mean()
    reinforce_loss("faithful", logp.detach(), F.cross_entropy(net(x), y, reduction="none"))[0].backward()
    for a, b in zip(matched, net.parameters()):  # the faithful loss scales the classifier's step by mean(L)
        torch.testing.assert_close(b.grad, a * lse)


# ------------------------------------------------------------------------------- random-mask control
def test_random_mask_control_keeps_the_policy_frozen(tmp_path, tiny_npz):
    torch.manual_seed(0)
    model = NoiseMaskPretrain(num_classes=6, in_channels=1, freeze_policy=True, stats_size=16, stats_resamples=49,
                              **TINY)
    before_p = {k: v.clone() for k, v in model.policy.state_dict().items()}  # params, BN stats, base
    before_c = [p.detach().clone() for p in model.classifier.parameters()]
    _trainer(tmp_path, epochs=2).fit(model, ImageNpzDataModule(str(tiny_npz), batch_size=16))
    after = model.policy.state_dict()
    unchanged = [k for k in before_p if torch.equal(before_p[k], after[k])]
    assert unchanged == list(before_p), set(before_p) - set(unchanged)
    assert any(not torch.equal(a, b) for a, b in zip(before_c, model.classifier.parameters()))
    assert not any(p.requires_grad for p in model.policy.parameters())
    # its masks are still random and image-dependent: the statistics were written for every epoch
    from pfkit.runs import RunDir

    table = RunDir(tmp_path).read("mask_stats")
    assert sorted(table["epoch"]) == [0, 1] and (table["mask_entropy"] < 0).all()
    assert table["mask_entropy"].nunique() == 1  # same policy, same images, every epoch
    # a trained policy does change (the control differs from faithful only there)
    trained = NoiseMaskPretrain(num_classes=6, in_channels=1, **TINY)
    b2 = {k: v.clone() for k, v in trained.policy.state_dict().items()}
    _trainer(tmp_path / "t").fit(trained, ImageNpzDataModule(str(tiny_npz), batch_size=16))
    assert any(not torch.equal(b2[k], v) for k, v in trained.policy.state_dict().items())


# ---------------------------------------------------------------------------------------------- blur
def _torchvision_gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision.transforms.functional.gaussian_blur (v0.2x `_get_gaussian_kernel1d` + reflect pad +
    one 2-D conv with the outer product), re-typed from its source: the PyPI torchvision wheel does not
    load against this CPU torch build (operator torchvision::nms does not exist)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = pdf / pdf.sum()
    k2 = torch.mm(k1[:, None], k1[None, :]).to(img)
    pad = [kernel_size // 2] * 4
    out = F.pad(img, pad, mode="reflect")
    return F.conv2d(out, k2.expand(img.shape[1], 1, kernel_size, kernel_size), groups=img.shape[1])


def _real_image() -> torch.Tensor:
    return torch.as_tensor(load_npz(SYNTHETIC_FILE).images["test"][3, 0], dtype=torch.float32)


@pytest.mark.parametrize("kernel_size, sigma", [(5, 1.0), (13, 6.0), (3, 0.75)])
def test_blur_matches_torchvision_on_a_real_image(kernel_size, sigma, shared_data_or_none):
    images = [_real_image()]
    if shared_data_or_none is not None:
        images.append(torch.as_tensor(load_npz(shared_data_or_none / "medmnist/pneumoniamnist.npz").images["test"][0, 0]))
    for img in images:
        assert img.std() > 0.05  # a real, non-constant image
        ours = upsample_blur(img[None], tuple(img.shape), sigma=sigma, kernel_size=kernel_size)  # no resize: pure blur
        ref = _torchvision_gaussian_blur(img[None, None], kernel_size, sigma)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        try:
            from torchvision.transforms.functional import gaussian_blur
        except Exception:  # not installable next to this torch build (see _torchvision_gaussian_blur)
            continue
        torch.testing.assert_close(ours, gaussian_blur(img[None, None], [kernel_size] * 2, [sigma] * 2),
                                   rtol=1e-5, atol=1e-6)
    # and the mask path: nearest upsampling of a patch mask, then the same blur
    torch.manual_seed(0)
    m = torch.rand(2, 7, 7)
    up = F.interpolate(m[:, None], size=(28, 28), mode="nearest")
    torch.testing.assert_close(upsample_blur(m, (28, 28), sigma=sigma, kernel_size=kernel_size),
                               _torchvision_gaussian_blur(up, kernel_size, sigma), rtol=1e-5, atol=1e-6)


@pytest.fixture
def shared_data_or_none():
    import os

    root = Path(__file__).resolve().parents[1]
    p = Path(os.environ.get("PFKIT_SHARED_DATA", root.parent / "shared" / "data"))
    return p if (p / "medmnist/pneumoniamnist.npz").is_file() else None


# --------------------------------------------------------------------------------------- base mixing
def test_base_mixing_with_known_head_outputs():
    """Heads whose last layer is W = 0, b = c output c for every image, so the expected log α and base
    follow from the official formulas alone (no call into the module's own heads)."""
    torch.manual_seed(0)
    p = MaskPolicy(grid=2, in_channels=1, widths=(4, 4, 4, 4), hidden=8)
    base0 = p.base_alpha.clone()
    c1, c2 = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([-1.0, 0.0, 2.0, 1.0])
    last = p.alpha[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(c1)
    x = torch.randn(5, 1, 16, 16)
    la, _ = p(x)  # train mode: mixes with the current base, then moves the base
    expected = 0.9 * base0 + 0.1 * c1
    torch.testing.assert_close(la.view(5, 4), expected.expand(5, 4))
    base1 = 0.99 * base0 + 0.01 * c1
    torch.testing.assert_close(p.base_alpha, base1)
    with torch.no_grad():
        last.bias.copy_(c2)
    la, _ = p(x)
    torch.testing.assert_close(la.view(5, 4), (0.9 * base1 + 0.1 * c2).expand(5, 4))
    torch.testing.assert_close(p.base_alpha, 0.99 * base1 + 0.01 * c2)
    p.eval()
    la, _ = p(x)
    torch.testing.assert_close(p.base_alpha, 0.99 * base1 + 0.01 * c2)  # eval: base untouched


# ------------------------------------------------------------------------------------------- metrics
def test_classification_metrics_hand_computed():
    # 3 classes; predictions = argmax of these logits
    target = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 2])
    logits = F.one_hot(pred, 3).float() * 2.0
    m = classification_metrics(logits, target, 3)
    # per class (tp, fp, fn): 0 (1,0,1) 1 (2,1,1) 2 (1,1,0)
    prec = [1.0, 2 / 3, 0.5]
    rec = [0.5, 2 / 3, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(prec, rec)]
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(np.mean(prec), abs=1e-6)
    assert m["recall"] == pytest.approx(np.mean(rec), abs=1e-6) == pytest.approx(m["balanced_acc"])
    assert m["f1"] == pytest.approx(np.mean(f1), abs=1e-6)


def test_auc_matches_mann_whitney():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[target] * 0.8
    m = classification_metrics(torch.tensor(logits), torch.tensor(target), 3)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    aucs = []
    for c in range(3):  # one-vs-rest AUC = Mann-Whitney U / (n_pos n_neg)
        pos, neg = probs[target == c, c], probs[target != c, c]
        aucs.append(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    assert m["auc"] == pytest.approx(np.mean(aucs), abs=1e-5)
    # binary (PneumoniaMNIST): the macro over the two one-vs-rest AUCs is the binary AUC
    t2 = rng.integers(0, 2, 40)
    l2 = rng.normal(size=(40, 2)) + np.eye(2)[t2]
    p1 = np.exp(l2[:, 1]) / np.exp(l2).sum(1)
    u = stats.mannwhitneyu(p1[t2 == 1], p1[t2 == 0]).statistic / ((t2 == 1).sum() * (t2 == 0).sum())
    assert classification_metrics(torch.tensor(l2), torch.tensor(t2), 2)["auc"] == pytest.approx(u, abs=1e-5)


def test_eta_squared_and_permutation_test():
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    g = np.array([0, 0, 1, 1])
    # grand mean 3; group means 1, 5: SS_between = 2*4 + 2*4 = 16; SS_total = 9+1+1+9 = 20
    assert eta_squared(x, g) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(3), 30)
    noise = rng.normal(size=(90, 8))
    null = group_dependence(noise, groups, n_resamples=499, seed=1)
    shifted = noise + np.eye(3)[groups] @ rng.normal(size=(3, 8))
    strong = group_dependence(shifted, groups, n_resamples=499, seed=1)
    assert null["p"] > 0.05 and strong["p"] <= 0.01 and strong["eta2"] > null["eta2"]
    assert strong["eta2"] == pytest.approx(eta_squared(shifted, groups))
    assert math.isnan(group_dependence(noise, np.zeros(90), n_resamples=9)["p"])  # one group: undefined


# ------------------------------------------------------------------------------- weight averaging
def test_average_last_epochs_is_the_mean_of_their_weights(tmp_path, tiny_npz):
    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.states = []

        def on_train_epoch_end(self, trainer, module):  # runs before the module's own hook
            self.states.append({k: v.detach().clone() for k, v in module.classifier.state_dict().items()})

    torch.manual_seed(0)
    model = PlainClassifier(num_classes=6, in_channels=1, widths=TINY["widths"], average_last=2)
    rec = Record()
    _trainer(tmp_path, epochs=3, callbacks=[rec]).fit(model, ImageNpzDataModule(str(tiny_npz), batch_size=8))
    assert len(rec.states) == 3 and model.averaged_epochs == 2
    final = model.classifier.state_dict()
    for k, v in final.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (rec.states[1][k] + rec.states[2][k]) / 2)
    assert not torch.equal(final["head.weight"], rec.states[2]["head.weight"])


# ------------------------------------------------------------------------------ fine-tuning curve
class _Blobs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 7)

    def forward(self, x):
        return self.head(self.body(x))


def test_finetune_curve_adapts_a_copy_to_new_classes():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    py, ty = np.repeat(np.arange(4), 40), np.repeat(np.arange(4), 25)
    px = (centres[py] + rng.normal(0, 0.4, (160, 2))).astype(np.float32)
    tx = (centres[ty] + rng.normal(0, 0.4, (100, 2))).astype(np.float32)
    net = _Blobs()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rows = finetune_curve(net, px, py, tx, ty, shots=(8, 64, 1000), steps=150, lr=2e-2, seed=0)
    assert [r["n"] for r in rows] == [8, 64]  # n larger than the pool is skipped
    assert rows[1]["macro_f1"] > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model itself is untouched
    assert net.head.out_features == 7


# ------------------------------------------------------------------------------------------ study job
def _spec(tmp_path, tiny_npz, stage, **model):
    from pfkit.study import RunSpec

    cfg = {"model": {"init_args": {"arch": "resnet", "stats_size": 16, "stats_resamples": 19, **TINY, **model}},
           "data": {"init_args": {"path": str(tiny_npz), "batch_size": 16}}, "trainer": {"max_epochs": 1}}
    run_dir = tmp_path / stage / "seed_0"
    run_dir.mkdir(parents=True)
    return RunSpec(stage, 0, run_dir, cfg, {"stage": stage if stage == "baseline" else "noisemask",
                                             "finetune_epochs": 1, "finetune_warmup": 1, "shots": [4, 8],
                                             "repeats": 1, "curve_steps": 2})


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["baseline", "random_mask"])
def test_run_arm_returns_the_study_metrics(tmp_path, tiny_npz, stage):
    from pfkit.demos.noisemask import run_arm

    model = {"freeze_policy": True} if stage == "random_mask" else {}
    if stage == "baseline":
        model = {k: v for k, v in TINY.items() if k == "widths"}
    spec = _spec(tmp_path, tiny_npz, stage, **model)
    if stage == "baseline":
        spec.config["model"]["init_args"] = {"arch": "resnet", "widths": TINY["widths"]}
    out = run_arm(spec)
    assert out["n_eval"] == 8 and out["n_shift"] == 8 and out["n_unseen_test"] == 8
    for k in ("test_acc", "test_f1", "test_auc", "test_balanced_acc", "test_precision", "shift_f1",
              "probe_f1_n4", "probe_f1_n8", "ft_f1_n4", "ft_f1_n8"):
        assert 0 <= out[k] <= 1, k
    if stage == "baseline":
        assert "mask_entropy" not in out and (spec.run_dir / "baseline" / "metrics.csv").is_file()
    else:
        assert {"mask_entropy", "mask_class_p", "mask_modality_p", "heated_test_acc"} <= set(out)
        assert 0 < out["mask_class_p"] <= 1
        assert (spec.run_dir / "finetune" / "metrics.csv").is_file()
    assert (spec.run_dir / "fewshot_probe.csv").is_file()


def test_run_arm_rejects_an_unknown_stage(tmp_path, tiny_npz):
    from pfkit.demos.noisemask import run_arm

    spec = _spec(tmp_path, tiny_npz, "x")
    spec.args["stage"] = "pretrain_only"
    with pytest.raises(ValueError, match="stage"):
        run_arm(spec)
