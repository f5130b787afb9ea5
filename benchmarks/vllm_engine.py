"""vLLM engine vs pfkit's own decoder on the embedded policy, side by side in one process.

    .venv-vllm/bin/python benchmarks/vllm_engine.py [--prompts 64] [--tokens 48] [--rounds 3] [--group-size 1]
    .venv-vllm/bin/python benchmarks/vllm_engine.py --grpo [--steps 3]   # GRPO step time, engine hf vs vllm

Prints: engine import/build time, the log-prob gap against the teacher-forced HF forward, weight-push time,
and tokens/s (wall and process CPU) for ``pfkit.rollout.generate`` and ``VLLMEngine.generate`` on the same
prompts, interleaved round by round (the machine may be shared: the load average is printed). EOS is banned
from neither; tokens = kept response tokens. Note: once vLLM is in the process its CPU worker has bound the
OpenMP threads, and ``torch.set_num_threads`` is a no-op; both engines run with that thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=1)
    ap.add_argument("--grpo", action="store_true", help="time `pfkit fit` steps with engine hf and vllm instead")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.grpo:
        return grpo_steps(args.steps)

    import torch

    torch.set_num_threads(1)
    from pfkit.models import load_policy
    from pfkit.rollout import generate, sequence_logprobs
    from pfkit.tasks import codegen

    model, tok = load_policy("embedded")
    problems = codegen.splits(seed=0)["train"]
    prompts = [problems[i % len(problems)].prompt for i in range(args.prompts)]
    t0 = time.perf_counter()
    from pfkit.rollout.vllm import VLLMEngine

    eng = VLLMEngine(model, tok, path="embedded", max_new_tokens=args.tokens)
    print(f"engine: import + build {time.perf_counter() - t0:.1f} s (LLM(...) {eng.build_time:.1f} s), dtype "
          f"{eng.dtype}, sleep mode supported: {eng.sleep_supported}; torch threads {torch.get_num_threads()}")

    kw = dict(max_new_tokens=args.tokens, group_size=args.group_size, temperature=1.0)
    ro = eng.generate(prompts, seed=0, **kw)
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_len)
    m = ro.response_mask.bool()
    gap = (lp - ro.logprobs)[m].abs()
    print(f"log-prob gap vs HF forward: max {gap.max():.2e}, mean {gap.mean():.2e} over {int(m.sum())} tokens")

    pushes = [eng.push(model) for _ in range(5)]
    print(f"weight push (reload_weights + reset_prefix_cache): median {statistics.median(pushes) * 1e3:.1f} ms "
          f"over 5 ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)")

    runs = {"pfkit generate": lambda s: generate(model, tok, prompts, seed=s, **kw),
            "vLLM engine": lambda s: eng.generate(prompts, seed=s, **kw)}
    res: dict[str, list[tuple[float, float, int]]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn(r)
            res[name].append((time.perf_counter() - w0, time.process_time() - c0, int(out.response_mask.sum())))
    print(f"\n{args.prompts} prompts x {args.group_size} x <= {args.tokens} tokens, {args.rounds} rounds interleaved, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"{'engine':<16}{'tokens/s (wall)':>16}{'tokens/s (CPU)':>16}{'wall s/round':>14}")
    rate = {}
    for name, rows in res.items():
        wall, cpu, n = (sum(x[i] for x in rows) for i in range(3))
        rate[name] = n / wall
        print(f"{name:<16}{n / wall:>16.0f}{n / cpu:>16.0f}{wall / len(rows):>14.2f}")
    print(f"vLLM / pfkit (wall): {rate['vLLM engine'] / rate['pfkit generate']:.2f}x")
    eng.close()


def grpo_steps(steps: int) -> None:
    """``pfkit fit`` (configs/grpo_codegen.yaml, 4 prompts x 4 samples x 64 tokens) with each engine, one
    subprocess each (vLLM changes the process's threading), one after the other; step times from metrics.csv.
    The first step of each includes nothing of the engine build (built in ``on_fit_start``)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("hf", "vllm"):
            run = Path(tmp) / engine
            cmd = [sys.executable, "-m", "pfkit.cli", "fit", "-c", str(root / "configs/grpo_codegen.yaml"),
                   "--run_dir", str(run), "--model.init_args.engine", engine, "--model.init_args.sampler", "uniform",
                   "--model.init_args.prompts_per_step", "4", "--model.init_args.group_size", "4",
                   "--model.init_args.max_new_tokens", "64", "--data.init_args.n_train", "8",
                   "--data.init_args.n_val", "4", "--data.init_args.steps_per_epoch", str(steps),
                   "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false"]
            w0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(root)})
            m = pd.read_csv(run / "metrics.csv").dropna(subset=["train/step_time"])
            rows.append({"engine": engine, "process_s": time.perf_counter() - w0,
                         "step_s_median": m["train/step_time"].median(),
                         "step_cpu_s_median": m["train/step_cpu_time"].median(),
                         "push_s_median": m["train/engine_push_time"].median() if "train/engine_push_time" in m else 0.0,
                         "steps": len(m)})
    print(f"GRPO steps (4 prompts x 4 x <= 64 tokens, {steps} steps), load average {os.getloadavg()[0]:.1f} "
          "(shared machine)")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
