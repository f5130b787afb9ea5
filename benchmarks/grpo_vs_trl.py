"""pfkit's GRPO module vs TRL's ``GRPOTrainer`` on one identical CPU setting, in one process.

Setting (both sides): the same tiny GPT-2 (4 layers, width 128, 4 heads, character-level vocabulary,
same initial weights), 16 prompts x 8 completions x 32 new tokens per step, temperature 1, the same
reward function (share of digits in the completion), no KL (beta 0, so no reference model), one
optimizer step per generation batch (TRL ``num_iterations=1``), DAPO token-mean loss with clip
0.2 / 0.28 and std-scaled group advantages on both sides, AdamW lr 1e-5, no gradient clipping difference
(max_grad_norm 1.0 both). Each side runs ``--steps`` steps; the first ``--warmup`` are discarded; the
median seconds per step is reported (TRL: ``on_step_begin``..``on_step_end`` callback; pfkit: the module's
``training_step`` inside ``lightning.Trainer.fit``). Target: pfkit >= 3x TRL's steps per second, by wall
clock and by CPU time (both printed, with the load average: on a shared machine wall time is inflated).

    python benchmarks/grpo_vs_trl.py [--steps 8] [--warmup 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

PROMPTS = [f"Q{i}: write {i % 7 + 2} digits then stop. A:" for i in range(64)]
K, G, NEW_TOKENS = 16, 8, 32


def digit_share(completion: str) -> float:
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1) if completion else 0.0


def build_policy(seed: int = 0):
    from pfkit.models import build_policy as build
    from pfkit.models import train_tokenizer

    # 256 byte symbols + 2 specials and no merges: a character-level vocabulary
    tok = train_tokenizer(PROMPTS + ["0123456789 abcdefghijklmnopqrstuvwxyz"], vocab_size=258)
    torch.manual_seed(seed)
    model = build(tok, n_layer=4, n_embd=128, n_head=4, n_positions=128)
    return model, tok


# TRL's settings for the same work, printed with the figures. Checked to be its fastest fair ones (TRL 1.16):
# beta 0 loads no reference; num_iterations 1 with one gradient step per generation batch makes TRL skip the
# old-log-prob forward (it reuses the detached current ones, as pfkit does); no vLLM, no gradient
# checkpointing, fp32 and no torch.compile on both sides (pfkit uses none of them either).
TRL_SETTINGS = dict(per_device_train_batch_size=K * G, num_generations=G, max_completion_length=NEW_TOKENS,
                    learning_rate=1e-5, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
                    scale_rewards="group", temperature=1.0, top_p=1.0, num_iterations=1, max_grad_norm=1.0,
                    gradient_accumulation_steps=1, gradient_checkpointing=False, use_vllm=False, bf16=False,
                    torch_compile=False)
PFKIT_SETTINGS = dict(sampler="uniform", prompts_per_step=K, group_size=G, max_new_tokens=NEW_TOKENS, lr=1e-5,
                      clip_low=0.2, clip_high=0.28, agg="token-mean", adv_scale="std", kl_coef=0.0, ppo_epochs=1,
                      max_grad_norm=1.0, temperature=1.0, top_p=1.0, shared_prefix=True)


def run_trl(model, tok, steps: int) -> list[tuple[float, float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))

    def reward(completions, **kw):
        return [digit_share(c) for c in completions]

    out = tempfile.mkdtemp(prefix="trl_bench_")
    cfg = GRPOConfig(output_dir=out, max_steps=steps, use_cpu=True, report_to="none", logging_steps=1,
                     save_strategy="no", dataloader_num_workers=0, seed=0, disable_tqdm=True, **TRL_SETTINGS)
    ds = Dataset.from_dict({"prompt": PROMPTS * 4})
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return times


def run_pfkit(model, tok, steps: int) -> tuple[list[tuple[float, float]], list[float]]:
    import lightning.pytorch as pl

    from pfkit.data.prompts import PromptDataModule, verifier_prompt_set
    from pfkit.modules.grpo import GRPOModule

    module = GRPOModule(policy=None, log_rollouts=False, log_difficulty="none", **PFKIT_SETTINGS)
    module.set_policy(model, tok)
    collect_cpu: list[float] = []  # CPU seconds of each step's rollouts (sample + reward); the rest is the update
    rollout = module.rollout

    def timed_rollout(ids):
        c0 = time.process_time()
        try:
            return rollout(ids)
        finally:
            collect_cpu.append(time.process_time() - c0)

    module.rollout = timed_rollout  # the uniform sampler calls it once per step
    dm = PromptDataModule.from_sets(verifier_prompt_set(PROMPTS, lambda p, c: digit_share(c)), None,
                                    steps_per_epoch=steps)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    return list(zip(module.step_times, module.step_cpu_times)), collect_cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    model, tok = build_policy()
    n_params = sum(p.numel() for p in model.parameters())
    pf, collect_cpu = run_pfkit(copy.deepcopy(model), tok, args.steps)
    pf, collect_cpu = pf[args.warmup:], collect_cpu[args.warmup:]
    trl_times = run_trl(copy.deepcopy(model), tok, args.steps)[args.warmup:]
    res = {}
    for name, times in (("trl", trl_times), ("pfkit", pf)):
        res[name] = {"wall_s_per_step": statistics.median(t[0] for t in times),
                     "cpu_s_per_step": statistics.median(t[1] for t in times), "times": times}
    print(f"setting: GPT-2 4x128 char vocab ({n_params / 1e6:.2f} M params), {K} prompts x {G} completions x "
          f"{NEW_TOKENS} new tokens per step, CPU threads={args.threads}, median over {len(pf)} steps")
    print("wall = elapsed seconds (inflated when the machine is shared); cpu = this process's CPU seconds")
    print("trl   GRPOConfig: " + ", ".join(f"{k}={v}" for k, v in TRL_SETTINGS.items()))
    print("pfkit GRPOModule: " + ", ".join(f"{k}={v}" for k, v in PFKIT_SETTINGS.items()))
    la = os.getloadavg()
    print(f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores"
          f"{' (shared machine)' if la[0] > 1 else ''}")
    print(f"{'':8} {'wall s/step':>12} {'steps/s':>8} {'cpu s/step':>11}")
    for name in ("trl", "pfkit"):
        r = res[name]
        print(f"{name:8} {r['wall_s_per_step']:12.3f} {1 / r['wall_s_per_step']:8.3f} {r['cpu_s_per_step']:11.3f}")
    col = statistics.median(collect_cpu)
    upd = statistics.median(t[1] - c for t, c in zip(pf, collect_cpu))
    res["pfkit"].update(collect_cpu_s=col, update_cpu_s=upd)
    print(f"pfkit step, CPU s (median): collect (sample + reward) {col:.3f}, update (advantages, forward, "
          f"backward, optimizer) {upd:.3f}")
    sw = res["trl"]["wall_s_per_step"] / res["pfkit"]["wall_s_per_step"]
    sc = res["trl"]["cpu_s_per_step"] / res["pfkit"]["cpu_s_per_step"]
    res.update(speedup_wall=sw, speedup_cpu=sc, threads=args.threads)
    print(f"pfkit speed-up: {sw:.2f}x TRL's steps/s by wall clock, {sc:.2f}x by CPU time "
          f"(target >= 3x: {'met' if min(sw, sc) >= 3 else 'NOT met' if max(sw, sc) < 3 else 'met on one measure'})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
