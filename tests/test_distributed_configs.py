"""configs/gpu/*.yaml parse through `pfkit fit --print_config` (model paths pointed at a tiny local random
model), and the GradientCheckpointing callback they use. No GPU needed: nothing is instantiated on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIGS = sorted((ROOT / "configs" / "gpu").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_pol(tmp_path_factory):
    from pfkit.models import build_policy, train_tokenizer

    out = tmp_path_factory.mktemp("gpu_cfg") / "pol"
    tok = train_tokenizer(["def f(x):\n    return x + 1\n"] * 20, vocab_size=200)
    torch.manual_seed(0)
    build_policy(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_there_are_ddp_and_fsdp_configs_for_every_rl_method():
    names = {p.stem for p in GPU_CONFIGS}
    assert {"grpo_vade_ddp", "grpo_vade_fsdp", "pfppo_ddp", "pfppo_fsdp", "sft_ddp", "reward_ddp"} <= names


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=[p.stem for p in GPU_CONFIGS])
def test_gpu_config_parses_with_a_local_model(config, tiny_pol, capsys):
    from pfkit.cli import main

    raw = yaml.safe_load(config.read_text())
    args = ["fit", "-c", str(config), "--model.init_args.policy", str(tiny_pol)]
    if "reward_model" in raw["model"]["init_args"]:
        args += ["--model.init_args.reward_model", str(tiny_pol)]
    if "policy" in raw["data"]["init_args"]:
        args += ["--data.init_args.policy", str(tiny_pol)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["policy"] == str(tiny_pol)
    t = printed["trainer"]
    assert t["accelerator"] == "gpu" and str(t["precision"]).startswith("bf16")
    strategy = t["strategy"] if isinstance(t["strategy"], str) else t["strategy"]["class_path"]
    assert ("ddp" in config.stem) == (strategy == "ddp")
    if "fsdp" in config.stem:  # FSDP2 through ModelParallelStrategy, data-parallel over every device
        assert strategy == "lightning.pytorch.strategies.ModelParallelStrategy", strategy
        args = t["strategy"]["init_args"]
        assert args["data_parallel_size"] == t["devices"] and args["tensor_parallel_size"] == 1
    callbacks = [c["class_path"] for c in t.get("callbacks") or []]
    assert "pfkit.callbacks.GradientCheckpointing" in callbacks


def test_gradient_checkpointing_callback_enables_it_and_keeps_gradients(tiny_pol):
    from lightning.pytorch import LightningModule

    from pfkit.callbacks import GradientCheckpointing
    from pfkit.models import load_policy

    class M(LightningModule):
        def __init__(self):
            super().__init__()
            self.model, _ = load_policy(tiny_pol)
            self.ref, _ = load_policy(tiny_pol)
            self.ref.requires_grad_(False)  # frozen models are left alone

    def grads(m):
        m.model.train()
        ids = torch.randint(0, 100, (2, 12))
        torch.manual_seed(0)
        m.model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in m.model.parameters()]

    torch.manual_seed(1)
    plain = M()
    torch.manual_seed(1)
    ckpt = M()
    cb = GradientCheckpointing()
    cb.setup(None, ckpt, "fit")
    assert cb.enabled == ["model"] and ckpt.model.is_gradient_checkpointing and not ckpt.ref.is_gradient_checkpointing
    torch.manual_seed(2)
    g_plain = grads(plain)
    torch.manual_seed(2)
    g_ckpt = grads(ckpt)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_plain, g_ckpt))
