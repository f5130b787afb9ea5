"""The run-folder contract (DESIGN.md): what training writes and what apps, notebooks and analysis read.

```
RUN_DIR/
  config.yaml            the resolved config
  metrics.csv            Lightning CSV logger
  checkpoints/           Lightning checkpoints (sampler/tracker state included)
  rollouts.parquet/      PF-PPO/GRPO samples, one part file per step (and rank)
  difficulty.parquet/    GRPO sampler state per step
  masks/epoch_XXX.npz    noise-mask panels
  summary.json           the demo's final table
```

Tables are *directories* of parquet part files (the Hive/Spark layout that ``pandas.read_parquet``
reads as one table). That is how writers append per step without rewriting what is there, and how
readers can open a run that is still going: each part is written to a temporary name and renamed into
place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TABLES = ("rollouts", "difficulty")


class RunFolderError(FileNotFoundError):
    """A folder is not a pfkit run, or lacks an artifact the caller needs."""


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class RunDir:
    """Reads and writes the artifacts of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def mask_path(self, epoch: int) -> Path:
        return self.path / "masks" / f"epoch_{epoch:03d}.npz"

    # ----------------------------------------------------------------- tables
    def append(self, name: str, rows: pd.DataFrame | Iterable[Mapping[str, Any]], *, step: int = 0,
               rank: int = 0) -> Path | None:
        """Append rows to table ``name`` as a new part file; returns its path (None if no rows)."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if frame.empty:
            return None
        # the write time in the name keeps two writes of one (step, rank) in the order they were made
        part = self.table_path(name) / f"part-{step:08d}-r{rank:03d}-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.parquet"
        _atomic_write_bytes(part, lambda tmp: frame.to_parquet(tmp, index=False))
        return part

    def has_table(self, name: str) -> bool:
        p = self.table_path(name)
        return p.is_file() or (p.is_dir() and any(p.glob("part-*.parquet")))

    def read(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The whole table (all parts, in step order). Raises RunFolderError if it is absent."""
        p = self.table_path(name)
        if p.is_file():  # a single parquet file is accepted too (e.g. hand-made or exported)
            return pd.read_parquet(p, columns=columns)
        parts = sorted(p.glob("part-*.parquet")) if p.is_dir() else []
        if not parts:
            raise RunFolderError(
                f"{self.path} has no {name}.parquet: this run did not log {name}. "
                f"Point at a run folder written by a module that logs it (see DESIGN.md run-folder contract)."
            )
        # one pyarrow dataset over the folder (part names sort in step order; ".tmp" parts are ignored), read
        # with the union of the parts' schemas: a column that only some steps have (a verdict field) is kept
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.unify_schemas([pq.read_schema(f) for f in parts], promote_options="permissive")
        return pd.read_parquet(p, columns=columns, schema=schema)

    # ---------------------------------------------------------------- metrics
    def metrics(self) -> pd.DataFrame:
        """Lightning's CSV metrics; rows of a step logged in several calls are merged."""
        candidates = [self.metrics_path, *sorted(self.path.glob("**/metrics.csv"))]
        for c in candidates:
            if c.is_file():
                df = pd.read_csv(c)
                if "step" in df.columns:
                    df = df.groupby("step", as_index=False).first()
                return df
        raise RunFolderError(f"{self.path} has no metrics.csv; was it written by `pfkit fit` or a demo?")

    # ---------------------------------------------------------------- summary
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(summary, indent=2, default=_json_default)
        _atomic_write_bytes(self.summary_path, lambda tmp: tmp.write_text(text))

    def read_summary(self) -> dict:
        if not self.summary_path.is_file():
            raise RunFolderError(f"{self.path} has no summary.json (the demo writes it at the end).")
        return json.loads(self.summary_path.read_text())

    # ------------------------------------------------------------------ masks
    def save_masks(self, epoch: int, **arrays: np.ndarray) -> Path:
        path = self.mask_path(epoch)

        def write(tmp: Path):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        _atomic_write_bytes(path, write)
        return path

    def mask_epochs(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "masks").glob("epoch_*.npz"))

    def load_masks(self, epoch: int) -> dict[str, np.ndarray]:
        path = self.mask_path(epoch)
        if not path.is_file():
            raise RunFolderError(f"{path} not found; epochs present: {self.mask_epochs() or 'none'}")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    # --------------------------------------------------------------- checking
    def require(self, *artifacts: str) -> RunDir:
        """Raise a RunFolderError naming what is missing, e.g. ``require("rollouts")``."""
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path} is not a folder. Pass the run folder a pfkit job wrote.")
        missing = []
        for a in artifacts:
            ok = {
                "metrics": lambda: self.metrics_path.is_file() or any(self.path.glob("**/metrics.csv")),
                "masks": lambda: bool(self.mask_epochs()),
                "summary": lambda: self.summary_path.is_file(),
                "config": lambda: self.config_path.is_file(),
            }.get(a, lambda a=a: self.has_table(a))()
            if not ok:
                missing.append(a)
        if missing:
            raise RunFolderError(
                f"{self.path} is missing {', '.join(missing)}. It is not a pfkit run folder of the right kind: "
                f"run `pfkit demo ...` or `pfkit fit ...` with a module that writes {', '.join(missing)}."
            )
        return self


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def run_dir_of(trainer) -> RunDir:
    """The run folder of a Lightning trainer: its logger's log_dir, else default_root_dir."""
    path = getattr(trainer, "log_dir", None) or trainer.default_root_dir
    return RunDir(path)
