"""Image data for the noise-mask method: a MedMNIST ``.npz`` loader, the embedded synthetic
multi-modal / multi-organ generator, and a LightningDataModule over either.

MedMNIST layout (read with numpy; the ``medmnist`` package asserts official split sizes):
``{train,val,test}_images`` uint8 ``N×H×W`` (grey) or ``N×H×W×3`` (RGB), ``{train,val,test}_labels``
int ``N×1``. The synthetic file adds ``unseen_{train,test}_{images,labels}`` (held-out "unseen concept"
classes for few-shot evaluation), ``shift_test_{images,labels}`` (the seen classes in organ × modality
combinations that train/val/test never show), ``{split}_modality`` and name arrays.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")
SYNTHETIC_FILE = Path(__file__).resolve().parents[1] / "assets" / "synthetic_medical.npz"  # package data

ORGANS = ("liver", "kidney", "heart", "lungs", "spine", "bladder",  # seen
          "vessel", "stomach", "brain", "femur")                     # unseen concepts
N_SEEN = 6
MODALITIES = ("CT", "MRI", "US")
EXTRA_GROUPS = ("unseen_train", "unseen_test", "shift_test")  # optional image groups beyond the splits


def held_out_modality(organ: int) -> int | None:
    """The modality a seen organ never appears in during training (``organ % 3``): its "shift" combination.

    Each seen organ is missing one modality and every modality is missing for two organs, so the
    classifier sees every organ and every modality, but not every pairing; ``shift_test`` holds exactly
    the missing pairings (the "held-out organ × modality combinations" generalisation test)."""
    return organ % len(MODALITIES) if organ < N_SEEN else None


class NpzFormatError(ValueError):
    """A file that is not a MedMNIST-format npz (missing key, bad shape); the message says how to fix it."""


# ============================================================================================ loader
@dataclass
class ImageSet:
    """Float images [N, C, H, W] in [0, 1] and int64 labels [N] per split (plus optional extras)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    num_classes: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[-1])

    @property
    def has_unseen(self) -> bool:
        return "unseen_train" in self.images


_FORMAT_HINT = ("A MedMNIST-format npz has keys train_images, train_labels, val_images, val_labels, "
                "test_images, test_labels; images uint8 N×H×W (grey) or N×H×W×3 (RGB), labels int N×1. "
                "Pass a MedMNIST file (e.g. pneumoniamnist.npz) or regenerate the synthetic set with "
                "`python scripts/make_synthetic_images.py`.")


def _to_nchw(name: str, arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = np.moveaxis(arr, -1, 1)
    else:
        raise NpzFormatError(
            f"{path}: {name} has shape {arr.shape}; expected N×H×W or N×H×W×3 (2-D images; 3-D MedMNIST "
            f"volumes are not supported). {_FORMAT_HINT}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise NpzFormatError(f"{path}: {name} has dtype {arr.dtype}; expected uint8 0–255 or float 0–1. {_FORMAT_HINT}")


def _labels(name: str, arr: np.ndarray, n: int, path: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise NpzFormatError(f"{path}: {name} has shape {arr.shape}; expected N×1 class indices (multi-label "
                             f"files such as ChestMNIST are not supported). {_FORMAT_HINT}")
    if arr.shape[0] != n:
        raise NpzFormatError(f"{path}: {name} has {arr.shape[0]} labels but the images have {n}. {_FORMAT_HINT}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise NpzFormatError(f"{path}: {name} has dtype {arr.dtype}; expected integer class indices. {_FORMAT_HINT}")
    return arr.astype(np.int64)


def load_npz(path: str | os.PathLike) -> ImageSet:
    """Read a MedMNIST-format npz (and the synthetic set's extra keys). Raises NpzFormatError / FileNotFoundError."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found. {_FORMAT_HINT}")
    with open(path, "rb") as fh:
        is_npy = fh.read(6) == b"\x93NUMPY"
    if not is_npy and not zipfile.is_zipfile(path):  # numpy would blame "allow_pickle": not the cause
        raise NpzFormatError(f"{path} is not an .npz archive (numpy.savez output). {_FORMAT_HINT}")
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise NpzFormatError(f"{path} is not a readable .npz file ({e}). {_FORMAT_HINT}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise NpzFormatError(f"{path} holds a single array (.npy), not an npz archive. {_FORMAT_HINT}")
    with z:
        keys = set(z.files)
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in keys]
        if missing:
            raise NpzFormatError(f"{path} is missing key(s) {', '.join(missing)} (it has: "
                                 f"{', '.join(sorted(keys)) or 'nothing'}). {_FORMAT_HINT}")
        images, labels = {}, {}
        groups = list(SPLITS) + [g for g in EXTRA_GROUPS if f"{g}_images" in keys]
        for s in groups:
            images[s] = _to_nchw(f"{s}_images", z[f"{s}_images"], path)
            labels[s] = _labels(f"{s}_labels", z[f"{s}_labels"], len(images[s]), path)
        shapes = {images[s].shape[1:] for s in SPLITS}
        if len(shapes) != 1:
            raise NpzFormatError(f"{path}: splits have different image shapes {sorted(shapes)}. {_FORMAT_HINT}")
        extras = {k: z[k] for k in keys if not any(k == f"{g}_{t}" for g in groups for t in ("images", "labels"))}
    num_classes = int(max(labels[s].max() for s in SPLITS)) + 1
    if min(labels[s].min() for s in SPLITS) < 0:
        raise NpzFormatError(f"{path}: negative labels; expected 0..C-1. {_FORMAT_HINT}")
    return ImageSet(images, labels, num_classes, extras, path)


# ========================================================================================= synthetic
def _organ_field(organ: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Implicit shape: < 1 inside. (u, v) are rotated, scaled coordinates in about [-1, 1]."""
    if organ == 0:  # liver: big ellipse with a second lobe
        return np.minimum((u / 0.75) ** 2 + (v / 0.5) ** 2, ((u + 0.45) / 0.35) ** 2 + ((v - 0.35) / 0.35) ** 2)
    if organ == 1:  # kidney: bean = ellipse minus a side bite
        f = (u / 0.4) ** 2 + (v / 0.65) ** 2
        bite = ((u - 0.42) / 0.25) ** 2 + (v / 0.25) ** 2
        return np.where(bite < 1, 2.0, f)
    if organ == 2:  # heart: thick ring (ventricle wall)
        r = np.sqrt(u**2 + v**2)
        return np.abs(r - 0.45) / 0.17
    if organ == 3:  # lungs: two tall ellipses
        return np.minimum(((u - 0.38) / 0.27) ** 2 + (v / 0.7) ** 2, ((u + 0.38) / 0.27) ** 2 + (v / 0.7) ** 2)
    if organ == 4:  # spine: vertical chain of vertebrae
        centres = np.linspace(-0.66, 0.66, 4)
        return np.min([(u / 0.25) ** 2 + ((v - c) / 0.16) ** 2 for c in centres], axis=0)
    if organ == 5:  # bladder: rounded square (superellipse)
        return (np.abs(u) / 0.55) ** 4 + (np.abs(v) / 0.55) ** 4
    if organ == 6:  # vessel: curved tube
        return np.abs(v - 0.35 * np.sin(2.5 * u)) / 0.14 + (np.abs(u) > 0.85) * 2.0
    if organ == 7:  # stomach: crescent
        return np.where(((u - 0.28) / 0.5) ** 2 + (v / 0.5) ** 2 < 1, 2.0, (u / 0.7) ** 2 + (v / 0.7) ** 2)
    if organ == 8:  # brain: disc with folded (gyral) border
        r, th = np.sqrt(u**2 + v**2), np.arctan2(v, u)
        return r / (0.6 + 0.1 * np.sin(7 * th + rng.uniform(0, 6.3)))
    if organ == 9:  # femur: shaft with two knobs
        shaft = (np.abs(u) / 0.7) ** 6 + (v / 0.12) ** 2
        knobs = np.minimum(((u - 0.7) / 0.22) ** 2 + (v / 0.22) ** 2, ((u + 0.7) / 0.22) ** 2 + (v / 0.22) ** 2)
        return np.minimum(shaft, knobs)
    raise ValueError(organ)


def _smooth(x: np.ndarray, passes: int = 1) -> np.ndarray:
    for _ in range(passes):
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
    return x


def synth_image(organ: int, modality: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One float image [size, size] in [0, 1]: an organ shape rendered in a modality's style."""
    lin = np.linspace(-1, 1, size)
    y, x = np.meshgrid(lin, lin, indexing="ij")
    th = rng.uniform(0, 2 * np.pi)
    scale = rng.uniform(0.75, 1.15)
    aspect = rng.uniform(0.85, 1.15)
    dx, dy = rng.uniform(-0.18, 0.18, 2)
    u = ((x - dx) * np.cos(th) + (y - dy) * np.sin(th)) / (scale * aspect)
    v = (-(x - dx) * np.sin(th) + (y - dy) * np.cos(th)) / (scale / aspect)
    sharp = rng.uniform(4, 10)
    organ_m = 1 / (1 + np.exp(np.clip(-sharp * (1 - _organ_field(organ, u, v, rng)), -50, 50)))
    body = 1 / (1 + np.exp(-8 * (1 - (x / 0.95) ** 2 - (y / 0.85) ** 2)))
    # distractor tissue: a few soft blobs that belong to no class
    blobs = np.zeros_like(x)
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.08, 0.25)
        blobs = np.maximum(blobs, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))
    contrast = rng.uniform(0.25, 0.6)
    if modality == 0:  # CT: bright organ in a grey body, additive Gaussian noise, metal streaks
        img = 0.05 + 0.3 * body + contrast * organ_m + 0.25 * blobs * body
        if rng.random() < 0.5:
            a, off = rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5)
            img += rng.uniform(0.2, 0.5) * np.exp(-((x * np.cos(a) + y * np.sin(a) - off) ** 2) / 0.002)
        img += rng.normal(0, rng.uniform(0.04, 0.12), img.shape)
    elif modality == 1:  # MRI: smooth bias field, Rician noise, ghost (shifted faint copy)
        bias = 1 + rng.uniform(-0.45, 0.45) * x + rng.uniform(-0.45, 0.45) * y + rng.uniform(-0.3, 0.3) * x * y
        s = (0.15 + 0.35 * body + contrast * organ_m + 0.3 * blobs * body) * bias
        if rng.random() < 0.4:
            s = s + 0.25 * np.roll(s, int(size * rng.uniform(0.2, 0.4)), axis=int(rng.integers(0, 2)))
        sigma = rng.uniform(0.04, 0.1)
        img = np.sqrt((s + rng.normal(0, sigma, s.shape)) ** 2 + rng.normal(0, sigma, s.shape) ** 2)
    else:  # US: fan-shaped field of view, hypoechoic organ, multiplicative speckle, acoustic shadow
        r, ang = np.sqrt(x**2 + (y + 1.0) ** 2), np.arctan2(x, y + 1.0)
        fan = (np.abs(ang) < 0.7) * (r < 1.9)
        tissue = 0.55 + 0.15 * _smooth(rng.normal(0, 1, x.shape), 2)
        s = tissue * (1 - contrast * 1.2 * organ_m) + 0.3 * blobs
        if rng.random() < 0.5:
            a0 = rng.uniform(-0.5, 0.5)
            s = s * (1 - 0.6 * (np.abs(ang - a0) < 0.08) * (r > rng.uniform(0.8, 1.4)))
        speckle = rng.gamma(shape=rng.uniform(4, 10), size=x.shape)
        speckle /= speckle.mean()
        img = _smooth(s * speckle, 1) * fan * np.exp(-0.3 * r)
    img = img - img.min()
    return np.clip(img / max(img.max(), 1e-6), 0, 1)


def make_synthetic(*, size: int = 28, n_train: int = 3000, n_val: int = 600, n_test: int = 600,
                   n_unseen_train: int = 600, n_unseen_test: int = 600, n_shift_test: int = 600, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """The embedded synthetic set as MedMNIST-format arrays (uint8 images, labels N×1) plus unseen classes.

    Classes are organ shapes; each image is drawn in one of three modalities (CT-, MRI-, US-like
    intensity profile, noise and artefacts), so the label is shared across very different looks.
    Two distribution shifts are held out of train/val/test:

    - ``shift_test``: the seen organs in the one modality each never shows in training
      (:func:`held_out_modality`), labels as in train: does the classifier transfer across pairings?
    - ``unseen_{train,test}``: organs ``ORGANS[N_SEEN:]`` (labels 0..3), all modalities: the "unseen
      concepts" for few-shot evaluation of the learnt features (linear probe, short fine-tuning).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    plan = {"train": (n_train, 0), "val": (n_val, 0), "test": (n_test, 0),
            "unseen_train": (n_unseen_train, N_SEEN), "unseen_test": (n_unseen_test, N_SEEN),
            "shift_test": (n_shift_test, 0)}
    n_mod = len(MODALITIES)
    for split, (n, first) in plan.items():
        k = N_SEEN if first == 0 else len(ORGANS) - N_SEEN
        labels = np.arange(n) % k
        rng.shuffle(labels)
        if first == 0 and split == "shift_test":
            mods = np.array([held_out_modality(int(c)) for c in labels])
        elif first == 0:  # one of the organ's two training modalities
            held = np.array([held_out_modality(int(c)) for c in labels])
            mods = (held + rng.integers(1, n_mod, n)) % n_mod
        else:
            mods = rng.integers(0, n_mod, n)
        imgs = np.stack([synth_image(first + int(c), int(m), size, rng) for c, m in zip(labels, mods)])
        out[f"{split}_images"] = (imgs * 255).round().astype(np.uint8)
        out[f"{split}_labels"] = labels[:, None].astype(np.int64)
        out[f"{split}_modality"] = mods.astype(np.int64)
    out["class_names"] = np.array(ORGANS[:N_SEEN])
    out["unseen_class_names"] = np.array(ORGANS[N_SEEN:])
    out["modality_names"] = np.array(MODALITIES)
    return out


def write_synthetic(path: str | os.PathLike, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = make_synthetic(**kw)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def synthetic_path(size: int = 28) -> Path:
    """The synthetic npz: the shipped ``pfkit/assets/synthetic_medical.npz`` at 28 px, else generated once into a cache."""
    if size == 28 and SYNTHETIC_FILE.is_file():
        return SYNTHETIC_FILE
    cache = Path(os.environ.get("PFKIT_CACHE", Path.home() / ".cache" / "pfkit"))
    path = cache / f"synthetic_medical_{size}.npz"
    if not path.is_file():
        write_synthetic(path, size=size)
    return path


def resolve(path: str) -> str:
    """``"synthetic"`` / ``"synthetic:64"`` -> the synthetic file (generated on demand); else the path itself."""
    if path.startswith("synthetic"):
        size = int(path.split(":", 1)[1]) if ":" in path else 28
        return str(synthetic_path(size))
    return path


# ======================================================================================= DataModule
class _ArrayDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class ImageNpzDataModule(LightningDataModule):
    """MedMNIST-format npz (or ``"synthetic"``) as normalised [B, C, H, W] batches.

    Normalisation uses the training set's mean/std (the official code normalises with dataset
    constants, 0.3162/0.3213 for RadImageNet), so a multiplicative mask pulls pixels toward the mean.
    Training augmentation (``augment``): random flip, small rotation and shift, applied per image on
    the whole batch after transfer. ``train_subset`` / ``eval_subset`` draw a random subset (by ``seed``)
    of train / val+test; ``val_subset`` (if set) sizes val alone, so the test set can stay whole while
    per-epoch validation stays cheap.
    """

    def __init__(self, path: str = "synthetic", batch_size: int = 64, num_workers: int = 0, augment: bool = True,
                 train_subset: int | None = None, eval_subset: int | None = None, seed: int = 0,
                 val_subset: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.data: ImageSet | None = None

    def prepare_data(self) -> None:
        resolve(self.hparams.path)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = load_npz(resolve(self.hparams.path))
        rng = np.random.default_rng(self.hparams.seed)
        h = self.hparams
        for split, n in (("train", h.train_subset), ("val", h.val_subset or h.eval_subset),
                         ("test", h.eval_subset)):
            if n and n < len(data.labels[split]):
                idx = np.sort(rng.choice(len(data.labels[split]), n, replace=False))
                data.images[split], data.labels[split] = data.images[split][idx], data.labels[split][idx]
                if f"{split}_modality" in data.extras:  # keep the per-image modality aligned with the subset
                    data.extras[f"{split}_modality"] = data.extras[f"{split}_modality"][idx]
        self.data = data
        self.mean = float(data.images["train"].mean())
        self.std = float(data.images["train"].std()) or 1.0
        self._aug_gen = torch.Generator().manual_seed(self.hparams.seed)

    @property
    def num_classes(self) -> int:
        self.setup()
        return self.data.num_classes

    @property
    def in_channels(self) -> int:
        self.setup()
        return self.data.in_channels

    def modality(self, split: str) -> np.ndarray | None:
        """Per-image modality index of ``split`` (synthetic set), or None when the file has none."""
        self.setup()
        return self.data.extras.get(f"{split}_modality")

    def normalise(self, images: np.ndarray) -> np.ndarray:
        return ((images - self.mean) / self.std).astype(np.float32)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image random horizontal flip, rotation (±0.2 rad) and shift (±1/14 of the size), batched.

        Done on the batch with one ``affine_grid``/``grid_sample`` (MONAI's per-sample ``RandAffine``
        cost ~18 ms per 28 px image on CPU, more than the training step itself).
        """
        b = x.shape[0]
        g = self._aug_gen
        angle = (torch.rand(b, generator=g) * 2 - 1) * 0.2
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (2 / 14)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(x)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if self.hparams.augment and trainer is not None and trainer.training:
            x, y = batch
            return self.augment(x), y
        return batch

    def dataset(self, split: str) -> Dataset:
        self.setup()
        return _ArrayDataset(self.normalise(self.data.images[split]), self.data.labels[split])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, drop_last=shuffle and len(self.data.labels[split])
                          > self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
