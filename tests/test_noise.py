"""pfkit.noise: Beta masks, blur, policy base parameters, REINFORCE losses (faithful and per_sample), few-shot."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pfkit.noise import MaskPolicy, RewardBaseline, apply_mask, faithful_loss, reinforce_loss, sample_mask
from pfkit.noise.fewshot import linear_probe, macro_f1, stratified_indices
from pfkit.noise.mask import blur_kernel, upsample_blur


def test_beta_log_prob_matches_scipy():
    torch.manual_seed(0)
    la, lb = torch.randn(3, 4, 4) * 0.8, torch.randn(3, 4, 4) * 0.8
    m, logp, _ = sample_mask(la, lb, seed=1)
    ref = stats.beta.logpdf(m.double().numpy(), la.exp().double().numpy(), lb.exp().double().numpy())
    np.testing.assert_allclose(logp.detach().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_mask_shapes_ranges_and_seed():
    torch.manual_seed(0)
    policy = MaskPolicy(grid=7, in_channels=3)
    x = torch.randn(5, 3, 28, 28)
    la, lb = policy(x)
    assert la.shape == lb.shape == (5, 7, 7)
    m, logp, _ = sample_mask(la, lb, seed=3)
    assert m.shape == logp.shape == (5, 7, 7) and not m.requires_grad and logp.requires_grad
    assert (m > 0).all() and (m < 1).all()
    assert torch.equal(m, sample_mask(la, lb, seed=3)[0]) and not torch.equal(m, sample_mask(la, lb, seed=4)[0])
    masked, pix = apply_mask(x, m, sigma=1.0, kernel_size=5)
    assert masked.shape == x.shape and pix.shape == (5, 1, 28, 28)
    assert pix.min() >= 0 and pix.max() <= 1
    torch.testing.assert_close(masked, x * pix)
    # one mask for the whole batch broadcasts (the official validation)
    masked1, pix1 = apply_mask(x, m[:1])
    assert pix1.shape == (1, 1, 28, 28) and masked1.shape == x.shape


def test_blur_kernel_is_torchvision_gaussian_and_keeps_constants():
    k = blur_kernel(6.0, 13)
    xs = torch.arange(-6, 7, dtype=torch.float64)
    ref = torch.exp(-0.5 * (xs / 6.0) ** 2)
    torch.testing.assert_close(k.double(), ref / ref.sum(), rtol=1e-5, atol=1e-6)
    const = torch.full((2, 4, 4), 0.7)
    torch.testing.assert_close(upsample_blur(const, (28, 28), sigma=1.0, kernel_size=5),
                               torch.full((2, 1, 28, 28), 0.7))
    # nearest upsampling: a one-hot patch becomes a block (no blur)
    one = torch.zeros(1, 2, 2)
    one[0, 0, 1] = 1
    up = upsample_blur(one, (4, 4), kernel_size=1)[0, 0]
    assert up[:2, 2:].eq(1).all() and up.sum() == 4
    with pytest.raises(ValueError, match="odd"):
        blur_kernel(1.0, 4)


def test_policy_base_mixing_and_running_average():
    torch.manual_seed(0)
    p = MaskPolicy(grid=2, in_channels=1, widths=(4, 4, 4, 4), hidden=8)
    x = torch.randn(6, 1, 16, 16)
    base_a = p.base_alpha.clone()
    p.eval()
    head = p.alpha(p.fe(x))
    la, _ = p(x)
    torch.testing.assert_close(la.view(6, 4), 0.9 * base_a + 0.1 * head)
    assert torch.equal(p.base_alpha, base_a)  # eval: base untouched
    p.train()
    head = p.alpha(p.fe(x)).detach()  # train-mode BN: batch statistics, same as inside forward
    la, _ = p(x)
    torch.testing.assert_close(la.view(6, 4).detach(), 0.9 * base_a + 0.1 * head)
    torch.testing.assert_close(p.base_alpha, 0.99 * base_a + 0.01 * head.mean(0, keepdim=True))
    assert p.unconditional()[0].shape == (1, 2, 2)
    with pytest.raises(ValueError, match="use_base"):
        MaskPolicy(grid=2, widths=(4, 4, 4, 4), hidden=8, use_base=False).unconditional()


def test_faithful_loss_is_mean_logsumexp_times_batch_ce():
    logp = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    ce = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = faithful_loss(logp, ce)
    lse = [math.log(math.exp(0.5) + math.exp(-1.0) + math.exp(2.0)), math.log(3.0)]
    assert loss.item() == pytest.approx(np.mean(lse) * 2.0, rel=1e-6)
    loss.backward()  # CE is NOT detached: the classifier's gradient is scaled by mean_i L_i
    torch.testing.assert_close(ce.grad, torch.full((2,), float(np.mean(lse)) / 2))


def test_per_sample_loss_detaches_ce_in_policy_term():
    logp = torch.randn(4, 3, requires_grad=True)
    ce = torch.tensor([0.5, 1.0, 2.0, 0.1], requires_grad=True)
    loss, stats_ = reinforce_loss("per_sample", logp, ce, baseline=RewardBaseline())
    loss.backward()
    torch.testing.assert_close(ce.grad, torch.full((4,), 0.25))  # only the mean-CE term
    adv = -ce.detach() - (-ce.detach()).mean()  # first batch: baseline = its own mean reward
    torch.testing.assert_close(logp.grad, (-adv / 4)[:, None].expand(4, 3))
    with pytest.raises(ValueError, match="mode"):
        reinforce_loss("textbook", logp, ce)


def _toy_step(mode, ces, seed=0):
    """Per-image Beta parameters (grid 2x2), one SGD step on the REINFORCE loss with the given per-image CE.
    Returns the change of log p(sampled mask) per image."""
    torch.manual_seed(seed)
    la = torch.zeros(len(ces), 2, 2, requires_grad=True)
    lb = torch.zeros(len(ces), 2, 2, requires_grad=True)
    m, logp, _ = sample_mask(la, lb, seed=seed)
    ce = torch.tensor(ces)
    loss, _ = reinforce_loss(mode, logp, ce, baseline=RewardBaseline())
    loss.backward()
    with torch.no_grad():
        la -= 0.05 * la.grad
        lb -= 0.05 * lb.grad
        after = torch.distributions.Beta(la.exp(), lb.exp()).log_prob(m).flatten(1).sum(1)
    return (after - logp.detach().flatten(1).sum(1)).numpy()


def test_reinforce_per_sample_raises_probability_of_low_loss_masks():
    for seed in range(5):
        d = _toy_step("per_sample", [0.2, 2.0], seed)
        assert d[0] > 0 > d[1], d  # below-baseline loss -> more likely; above -> less likely


def test_reinforce_faithful_lower_loss_raises_relative_probability():
    # faithful has one batch reward and no baseline: with CE > 0 every sampled mask becomes less likely,
    # by an amount proportional to CE, so a lower loss keeps (relatively) more probability on the mask.
    for seed in range(5):
        low, high = _toy_step("faithful", [0.2], seed)[0], _toy_step("faithful", [2.0], seed)[0]
        assert high < low < 0, (low, high)
        assert _toy_step("faithful", [0.0], seed)[0] == pytest.approx(0.0, abs=1e-7)


def test_reward_baseline_is_ema_of_batch_means():
    b = RewardBaseline(momentum=0.5)
    assert b.get(torch.tensor([1.0, 3.0])).item() == 2.0
    b.update(torch.tensor([1.0, 3.0]))
    b.update(torch.tensor([6.0]))
    assert b.value == pytest.approx(0.5 * 2 + 0.5 * 6)
    c = RewardBaseline()
    c.load_state_dict(b.state_dict())
    assert c.value == b.value


def test_macro_f1_hand_computed():
    pred = [0, 0, 1, 1, 2, 2]
    true = [0, 1, 1, 1, 2, 0]
    # class0: tp1 fp1 fn1 -> 0.5; class1: tp2 fp0 fn1 -> 0.8; class2: tp1 fp1 fn0 -> 2/3
    assert macro_f1(pred, true, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1([1, 1], [1, 1], 3) == 1.0  # absent classes are skipped


def test_stratified_draw_and_linear_probe():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    idx = stratified_indices(labels, 16, rng)
    assert len(idx) == 16 and len(set(idx)) == 16 and np.bincount(labels[idx]).tolist() == [4, 4, 4, 4]
    centres = torch.randn(4, 8) * 5
    x = centres[torch.as_tensor(labels)] + torch.randn(200, 8) * 0.3
    pred = linear_probe(x[idx], torch.as_tensor(labels[idx]), x, 4)
    assert macro_f1(pred.numpy(), labels, 4) > 0.95


def test_importing_the_noise_module_leaves_monai_for_first_use():
    """`pfkit fit` imports every LightningModule; monai (~5 s) must only load when a noise net is built."""
    import subprocess
    import sys

    code = ("import sys, pfkit.modules.noisemask; print('monai' in sys.modules); "
            "from pfkit.noise.nets import resnet_backbone; resnet_backbone(1); print('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
