"""`pfkit fit -c configs/sft_codegen.yaml` end to end (tiny overrides) as a real subprocess."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_sft_codegen_writes_metrics_with_pass_at_1(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pfkit.cli", "fit", "-c", str(ROOT / "configs" / "sft_codegen.yaml"),
           "--run_dir", str(run_dir), "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
           "--trainer.log_every_n_steps", "1",
           "--model.init_args.vocab_size", "300", "--model.init_args.n_layer", "1",
           "--model.init_args.n_embd", "32", "--model.init_args.n_head", "2",
           "--model.init_args.eval_samples", "2", "--model.init_args.eval_max_new_tokens", "8",
           "--data.init_args.n_train", "48", "--data.init_args.n_val", "4", "--data.init_args.n_test", "4",
           "--data.init_args.batch_size", "8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = pd.read_csv(run_dir / "metrics.csv")
    val = metrics.dropna(subset=["val/pass@1"])
    assert len(val) == 2 and val["step"].tolist() == [2, 5]  # validated after steps 3 and 6 (0-based)
    for col in ["val/pass@1", "val/frac_zero", "val/frac_mixed", "val/frac_one"]:
        assert val[col].between(0, 1).all()
    assert (val["val/frac_zero"] + val["val/frac_mixed"] + val["val/frac_one"]).round(6).eq(1).all()
    assert metrics["train/loss"].notna().sum() >= 5
    assert (run_dir / "config.yaml").is_file()

    from pfkit.models import load_policy

    model, tok = load_policy(run_dir / "policy")  # the trained policy is saved in HF format
    assert model.config.n_layer == 1 and len(tok) == 300
