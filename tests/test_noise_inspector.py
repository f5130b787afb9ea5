"""The noise-mask inspector's "what the policy learned" views: per-epoch mask statistics, whether masks
depend on the image (draw-to-draw vs image-to-image distance), two images' α/β side by side; in a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _browser import open_app, screenshot, serve, wait_text
from _inspect_runs import noisemask_run

from pfkit.inspect import _common as C
from pfkit.inspect import noisemask as N

STATS = pd.DataFrame({"epoch": [0, 1, 2], "mask_entropy": [-0.05, -0.08, -0.12],
                      "mask_class_eta2": [0.03, 0.05, 0.21], "mask_class_p": [0.4, 0.02, 0.001],
                      "mask_modality_eta2": [0.1, 0.1, 0.12], "mask_modality_p": [0.001, 0.001, 0.001]})


def _run(tmp_path, stats=True):
    run = noisemask_run(tmp_path / "run", epochs=(0, 2), images=6, classes=3, grid=4, size=16)
    if stats:
        for _, row in STATS.iterrows():
            run.append("mask_stats", [row.to_dict()], step=int(row.epoch))
    return run


def _two_draws(alpha, beta, seed):
    """torch's Beta draws of every image's mask under ``seed`` and ``seed + 1`` (as the app draws them)."""
    draws = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        draws.append(torch.distributions.Beta(torch.as_tensor(alpha), torch.as_tensor(beta)).sample()
                     .clamp(1e-6, 1 - 1e-6).double().numpy())
    return draws


def _expected_dependence(alpha, beta, labels, seed):
    """Independent of the app: torch's Beta under the two seeds, RMS distances by pair type."""
    a, b = _two_draws(alpha, beta, seed)
    k = len(a)
    same_img = np.mean([np.sqrt(np.mean((a[i] - b[i]) ** 2)) for i in range(k)])
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    diff_img = np.mean([np.sqrt(np.mean((a[i] - b[j]) ** 2)) for i, j in pairs])
    same_cls = np.mean([np.sqrt(np.mean((a[i] - b[j]) ** 2)) for i, j in pairs if labels[i] == labels[j]])
    diff_cls = np.mean([np.sqrt(np.mean((a[i] - b[j]) ** 2)) for i, j in pairs if labels[i] != labels[j]])
    return same_img, diff_img, same_cls, diff_cls


def test_image_dependence_matches_an_independent_computation(tmp_path):
    _run(tmp_path)
    data = N.NoiseMasks(tmp_path / "run")
    z = np.load(tmp_path / "run" / "masks" / "epoch_002.npz")
    d = data.image_dependence(2, seed=5)
    exp = _expected_dependence(z["alpha"], z["beta"], z["label"], 5)
    assert [d["same image"], d["different images"], d["same class"], d["different class"]] == pytest.approx(exp)
    text = N.policy_markdown(data)
    assert "epoch 2, 3 epochs logged" in text and "η² by class **0.210**" in text and "p = **0.001**" in text
    N.compare_figure(data, 2, 0, 5)
    N.policy_figure(data)


def test_identical_images_give_no_image_dependence(tmp_path):
    """A policy that ignores the image (every panel row has the same α, β): image-to-image distance equals
    draw-to-draw distance in expectation; with many patches they agree closely."""
    run = noisemask_run(tmp_path / "run", epochs=(0,), images=8, classes=2, grid=4, size=16)
    z = dict(np.load(tmp_path / "run" / "masks" / "epoch_000.npz"))
    g = 32
    z["alpha"] = np.full((8, g, g), 2.0, np.float32)
    z["beta"] = np.full((8, g, g), 3.0, np.float32)
    run.save_masks(0, **z)
    d = N.NoiseMasks(tmp_path / "run").image_dependence(0, seed=0)
    assert d["different images"] == pytest.approx(d["same image"], rel=0.05)
    assert "_No per-epoch mask statistics" in N.policy_markdown(N.NoiseMasks(tmp_path / "run"))


@pytest.mark.browser
def test_policy_views_in_browser(page, tmp_path):
    _run(tmp_path)
    z = np.load(tmp_path / "run" / "masks" / "epoch_002.npz")
    with serve(N.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        wait_text(page, "#policy", "η² by class 0.210")
        text = wait_text(page, "#dependence", "Do masks depend on the image?")
        exp = _expected_dependence(z["alpha"], z["beta"], z["label"], 0)
        assert f"same image {C.fmt(exp[0])}" in text and f"different images {C.fmt(exp[1])}" in text
        seed = page.locator("#seed input")
        seed.fill("3")
        seed.press("Enter")
        text = wait_text(page, "#dependence", "seeds 3 and 4")
        exp = _expected_dependence(z["alpha"], z["beta"], z["label"], 3)
        assert f"same class {C.fmt(exp[2])}" in text and f"different class {C.fmt(exp[3])}" in text
        box = page.locator("#img_b input")
        box.fill("4")
        box.press("Enter")
        page.locator("#compare img, #compare canvas, #compare svg").first.wait_for()
        page.locator("#policy_curves img, #policy_curves canvas, #policy_curves svg").first.wait_for()
        screenshot(page, tmp_path / "noisemask_policy.png")


def test_find_images_matches_numpy_and_rejects_bad_filters(tmp_path):
    noisemask_run(tmp_path / "run", epochs=(0,), images=12, classes=3, grid=4, size=16)
    z = np.load(tmp_path / "run" / "masks" / "epoch_000.npz")
    m = (z["alpha"] / (z["alpha"] + z["beta"])).reshape(12, -1).astype(np.float64)
    data = N.NoiseMasks(tmp_path / "run")
    t = data.image_table(0)
    np.testing.assert_allclose(t.mask_mean, m.mean(1), rtol=1e-6)
    np.testing.assert_allclose(t.mask_sd, m.std(1), rtol=1e-6)
    np.testing.assert_allclose(t.saved_mask_mean, z["pixel_mask"].reshape(12, -1).mean(1), rtol=1e-6)
    lo = float(np.median(m.mean(1)))
    got = data.find(0, N.ImageQuery(label="1", correct=N.CORRECT, mask_mean=(None, None)))
    assert got.image.tolist() == [i for i in range(12) if z["label"][i] == 1 and z["pred"][i] == 1]
    got = data.find(0, N.ImageQuery(mask_mean=(lo, None), mask_sd=("", m.std(1).max())))
    assert got.image.tolist() == np.flatnonzero(m.mean(1) >= lo).tolist()
    with pytest.raises(C.BadQuery, match="min 0.9 is above max 0.1"):
        data.find(0, N.ImageQuery(mask_mean=(0.9, 0.1)))
    z2 = {k: v for k, v in z.items() if k != "pred"}
    nopred = noisemask_run(tmp_path / "nopred", epochs=(0,), images=12)
    nopred.save_masks(0, **z2)
    with pytest.raises(C.BadQuery, match="no predictions"):
        N.NoiseMasks(tmp_path / "nopred").find(0, N.ImageQuery(correct=N.WRONG))
    assert "listing the first" not in N.found_markdown(got, 12, 0)


def _expected_by_class(alpha, beta, labels, seed):
    """Per class, independent of the app: torch's Beta draws under the two seeds, RMS distances."""
    a, b = _two_draws(alpha, beta, seed)
    rms = lambda i, j: np.sqrt(np.mean((a[i] - b[j]) ** 2))  # noqa: E731
    out = {}
    for c in sorted(set(labels.tolist())):
        mine = [i for i in range(len(a)) if labels[i] == c]
        rest = [j for j in range(len(a)) if labels[j] != c]
        out[c] = (len(mine), np.mean([rms(i, i) for i in mine]),
                  np.mean([rms(i, j) for i in mine for j in mine if i != j]),
                  np.mean([rms(i, j) for i in mine for j in rest]))
    return out


@pytest.mark.browser
def test_distance_per_class_and_two_images_numbers_in_browser(page, tmp_path):
    """#20 item 5 with numbers: the per-class draw-to-draw vs image-to-image distances, and the two compared
    images' α, β, α/(α+β) and their RMS differences, against torch / numpy over the npz."""
    _run(tmp_path)
    z = np.load(tmp_path / "run" / "masks" / "epoch_002.npz")
    al, be = z["alpha"].astype(np.float64), z["beta"].astype(np.float64)
    with serve(N.build_app(tmp_path / "run")) as url:
        open_app(page, url)
        wait_text(page, "#dependence", "seeds 0 and 1")
        exp = _expected_by_class(z["alpha"], z["beta"], z["label"], 0)
        wait_text(page, "#dependence-table", "vs other classes")
        for r, (c, (n, same, within, across)) in enumerate(exp.items()):
            cells = [page.locator(f'#dependence-table [data-testid="cell-{r}-{k}"]').inner_text().strip()
                     for k in range(5)]
            assert int(cells[0]) == c and int(cells[1]) == n
            assert [float(x) for x in cells[2:]] == pytest.approx([same, within, across], abs=5e-5), (c, cells)
        box = page.locator("#img_b input")
        box.fill("4")
        box.press("Enter")
        text = wait_text(page, "#compare-info", "Image 0 vs image 4 (epoch 2)")
        m = al / (al + be)
        for i in (0, 4):
            assert (f"image {i} (label {z['label'][i]}): mean α {C.fmt(al[i].mean())}, mean β {C.fmt(be[i].mean())}, "
                    f"mean α/(α+β) {C.fmt(m[i].mean())}") in text
        rms = lambda x: np.sqrt(np.mean((x[0] - x[4]) ** 2))  # noqa: E731
        assert f"RMS difference: α {C.fmt(rms(al))}, β {C.fmt(rms(be))}, α/(α+β) {C.fmt(rms(m))}" in text
        page.locator("#compare img").first.wait_for()
        import os

        if os.environ.get("PFKIT_SHOTS"):
            screenshot(page, os.path.join(os.environ["PFKIT_SHOTS"], "noisemask-dependence-compare.png"))
