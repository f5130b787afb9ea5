"""Write the embedded synthetic multi-modal, multi-organ image set (MedMNIST npz layout).

    python scripts/make_synthetic_images.py                    # pfkit/assets/synthetic_medical.npz, 28 px
    python scripts/make_synthetic_images.py --size 64 --out /tmp/synth64.npz
"""

from __future__ import annotations

import argparse
import time

from pfkit.data.images import MODALITIES, N_SEEN, ORGANS, SYNTHETIC_FILE, load_npz, write_synthetic


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(SYNTHETIC_FILE))
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=3000)
    args = p.parse_args(argv)
    t = time.time()
    path = write_synthetic(args.out, size=args.size, seed=args.seed, n_train=args.n_train)
    data = load_npz(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.time() - t:.1f}s: "
          + ", ".join(f"{k} {v.shape}" for k, v in data.images.items()))
    print(f"seen classes {ORGANS[:N_SEEN]}, unseen {ORGANS[N_SEEN:]}, modalities {MODALITIES}")


if __name__ == "__main__":
    main()
