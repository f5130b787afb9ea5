"""pfkit.data.images: MedMNIST npz loader (and its errors), synthetic generator, DataModule."""

import numpy as np
import pytest
import torch

from pfkit.data.images import (
    MODALITIES,
    N_SEEN,
    ORGANS,
    ImageNpzDataModule,
    NpzFormatError,
    load_npz,
    make_synthetic,
    write_synthetic,
)

SMALL = dict(n_train=36, n_val=12, n_test=12, n_unseen_train=16, n_unseen_test=8, n_shift_test=6)


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "s.npz", size=32, seed=3, **SMALL)


def test_synthetic_npz_roundtrip(synth_file):
    raw = np.load(synth_file)
    assert raw["train_images"].dtype == np.uint8 and raw["train_images"].shape == (36, 32, 32)
    assert raw["train_labels"].shape == (36, 1)
    data = load_npz(synth_file)
    assert data.images["train"].shape == (36, 1, 32, 32) and data.images["train"].dtype == np.float32
    assert 0 <= data.images["train"].min() and data.images["train"].max() <= 1
    assert data.num_classes == N_SEEN and data.has_unseen and data.in_channels == 1 and data.image_size == 32
    assert sorted(np.unique(data.labels["train"])) == list(range(N_SEEN))  # balanced: every class present
    assert sorted(np.unique(data.labels["unseen_train"])) == list(range(len(ORGANS) - N_SEEN))
    assert set(np.unique(raw["train_modality"])) <= set(range(len(MODALITIES)))
    assert list(raw["unseen_class_names"]) == list(ORGANS[N_SEEN:])


def test_synthetic_is_seeded_and_modalities_differ():
    a, b = make_synthetic(size=28, seed=1, **SMALL), make_synthetic(size=28, seed=1, **SMALL)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = make_synthetic(size=28, seed=2, **SMALL)
    assert not np.array_equal(a["train_images"], c["train_images"])
    big = make_synthetic(size=28, seed=0, n_train=300, n_val=6, n_test=6, n_unseen_train=4, n_unseen_test=4,
                         n_shift_test=4)
    imgs, mods = big["train_images"].astype(float) / 255, big["train_modality"]
    # US frames have a dark outside-the-fan region in the top corners; CT/MRI bodies do not go to 0 there
    corner = imgs[:, :4, :4].mean(axis=(1, 2))
    assert corner[mods == 2].mean() < 0.02 < corner[mods != 2].mean()


def test_rgb_and_flat_labels_accepted(tmp_path):
    p = tmp_path / "rgb.npz"
    arr = {f"{s}_images": np.random.randint(0, 255, (5, 28, 28, 3), dtype=np.uint8) for s in ("train", "val", "test")}
    arr |= {f"{s}_labels": np.arange(5) % 3 for s in ("train", "val", "test")}
    np.savez(p, **arr)
    data = load_npz(p)
    assert data.images["val"].shape == (5, 3, 28, 28) and data.num_classes == 3 and data.in_channels == 3
    np.testing.assert_allclose(data.images["train"][1, 2], arr["train_images"][1, ..., 2] / 255.0, rtol=1e-6)


def _valid():
    return {f"{s}_{k}": (np.zeros((4, 28, 28), np.uint8) if k == "images" else np.zeros((4, 1), np.int64))
            for s in ("train", "val", "test") for k in ("images", "labels")}


@pytest.mark.parametrize("break_it, match", [
    (lambda d: d.pop("val_labels"), "missing key.*val_labels"),
    (lambda d: d.update(train_images=np.zeros((4, 28), np.uint8)), r"train_images has shape \(4, 28\)"),
    (lambda d: d.update(test_labels=np.zeros((3, 1), np.int64)), "test_labels has 3 labels but the images have 4"),
    (lambda d: d.update(train_labels=np.zeros((4, 14), np.int64)), "multi-label"),
    (lambda d: d.update(train_images=np.zeros((4, 28, 28), np.int32)), "dtype int32"),
])
def test_malformed_npz_names_the_problem_and_the_fix(tmp_path, break_it, match):
    d = _valid()
    break_it(d)
    p = tmp_path / "bad.npz"
    np.savez(p, **d)
    with pytest.raises(NpzFormatError, match=match) as e:
        load_npz(p)
    assert "make_synthetic_images.py" in str(e.value)  # the fix is in the message


def test_not_an_npz_and_missing_file(tmp_path):
    p = tmp_path / "x.npz"
    p.write_text("hello")
    with pytest.raises(NpzFormatError, match=r"is not an \.npz archive \(numpy\.savez output\)") as e:
        load_npz(p)
    assert "allow_pickle" not in str(e.value)  # numpy's own advice is not the user's fix
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(NpzFormatError, match="single array"):
        load_npz(npy)
    with pytest.raises(FileNotFoundError, match="nope.npz not found"):
        load_npz(tmp_path / "nope.npz")


def test_pneumoniamnist_loads(shared_data):
    data = load_npz(shared_data / "medmnist" / "pneumoniamnist.npz")
    assert data.images["train"].shape[1:] == (1, 28, 28) and data.num_classes == 2 and not data.has_unseen
    assert len(data.labels["train"]) == len(data.images["train"]) > 1000


def test_datamodule_normalises_batches_and_augments(synth_file):
    dm = ImageNpzDataModule(str(synth_file), batch_size=8, seed=0)
    dm.setup()
    assert dm.num_classes == N_SEEN and dm.in_channels == 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and y.dtype == torch.int64
    allx = torch.as_tensor(dm.normalise(dm.data.images["train"]))
    assert abs(allx.mean().item()) < 1e-4 and allx.std().item() == pytest.approx(1.0, abs=1e-3)
    aug = dm.augment(x)
    assert aug.shape == x.shape and not torch.equal(aug, x)
    sub = ImageNpzDataModule(str(synth_file), train_subset=10, eval_subset=5)
    sub.setup()
    assert len(sub.data.labels["train"]) == 10 and len(sub.data.labels["val"]) == 5


def test_shift_test_holds_exactly_the_held_out_organ_modality_pairings():
    from pfkit.data.images import held_out_modality

    d = make_synthetic(size=16, seed=4, n_train=120, n_val=30, n_test=30, n_unseen_train=8, n_unseen_test=8,
                       n_shift_test=60)
    held = {(o, held_out_modality(o)) for o in range(N_SEEN)}
    assert held == {(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)}
    for split in ("train", "val", "test"):
        pairs = set(zip(d[f"{split}_labels"][:, 0].tolist(), d[f"{split}_modality"].tolist()))
        assert not pairs & held, split
    train_pairs = set(zip(d["train_labels"][:, 0].tolist(), d["train_modality"].tolist()))
    assert len(train_pairs) == 2 * N_SEEN  # every organ in both of its other modalities
    assert {m for _, m in train_pairs} == set(range(len(MODALITIES)))
    assert set(zip(d["shift_test_labels"][:, 0].tolist(), d["shift_test_modality"].tolist())) == held
    # the unseen organs keep every modality
    assert set(d["unseen_train_modality"].tolist()) <= set(range(len(MODALITIES)))


def test_subsets_keep_modality_aligned_and_val_subset_leaves_test_whole(synth_file):
    full = load_npz(synth_file)
    dm = ImageNpzDataModule(str(synth_file), train_subset=10, val_subset=4, seed=1)
    dm.setup()
    assert len(dm.data.labels["train"]) == 10 and len(dm.data.labels["val"]) == 4
    assert len(dm.data.labels["test"]) == len(full.labels["test"])
    mod = dm.modality("train")
    assert mod is not None and len(mod) == 10
    # each kept image's modality is the one the file gives for that image
    idx = [int(np.flatnonzero((full.images["train"] == img).all(axis=(1, 2, 3)))[0]) for img in dm.data.images["train"]]
    np.testing.assert_array_equal(mod, full.extras["train_modality"][idx])
    assert load_npz(synth_file).images.keys() >= {"shift_test"}
