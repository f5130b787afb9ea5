"""How rollout and GRPO-step cost grow with batch size, response length and model size (CPU, one process).

    python benchmarks/rollout_scaling.py [--threads 1] [--quick] [--out benchmarks/out]

Three sweeps around a base setting, each changing one factor:

* ``batch``: rows per rollout (``prompts_per_step x group_size``, ``group_size`` 8) at 32 new tokens;
* ``response``: new tokens per row at 64 rows;
* ``model``: GPT-2s built from config, from the embedded policy's shape (4 layers x 128, ~1 M parameters)
  to 8 layers x 448 (~20 M), at 32 rows x 32 new tokens.

Each point times (a) ``pfkit.rollout.generate`` for the rows (``min_new_tokens = max_new_tokens``, so every
row has exactly the stated length) and (b) one GRPO step of ``pfkit.rl.grpo.step`` on the same rows (the
module's rollout, a digit-share reward, the clipped-surrogate update and AdamW step), wall and process CPU
seconds, best of ``--reps``. Prompts are the embedded code task's (about 80 tokens); the models have random
weights (speed does not depend on them). Printed: one table (with tokens/s and CPU microseconds per token
per million parameters, the number to scale a run's estimate with) and the machine's load average; a
seaborn plot goes to ``OUT/rollout_scaling.png`` (git-ignored). Also timed: sample-then-verify on the code
task with the sandbox's verification of one chunk overlapped with sampling the next (``overlap=True``) or not.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch

MODEL_SHAPES = [(4, 128, 4), (6, 256, 4), (8, 384, 6), (8, 448, 7)]  # (layers, width, heads)


def timed(fn, reps: int) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``, the best of ``reps`` runs (fewest interruptions on a shared machine)."""
    best = (float("inf"), float("inf"))
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0), key=lambda x: x[1])
    return best


def build(tok, layers: int, width: int, heads: int):
    from pfkit.models import build_policy

    torch.manual_seed(0)
    return build_policy(tok, n_layer=layers, n_embd=width, n_head=heads, n_positions=384).eval()


def measure(model, tok, prompts, rows: int, new_tokens: int, reps: int, group_size: int = 8) -> dict:
    from pfkit.data.prompts import verifier_prompt_set
    from pfkit.modules.grpo import GRPOModule
    from pfkit.rl import grpo
    from pfkit.rollout import generate

    k = max(1, rows // group_size)
    batch = [p for p in prompts[:k]]
    gen = lambda: generate(model, tok, batch, group_size=group_size, max_new_tokens=new_tokens,  # noqa: E731
                           min_new_tokens=new_tokens, seed=0)
    r_wall, r_cpu = timed(gen, reps)

    def reward(p, c):
        return sum(ch.isdigit() for ch in c) / max(len(c), 1)

    m = GRPOModule(policy=None, sampler="uniform", prompts_per_step=k, group_size=group_size,
                   max_new_tokens=new_tokens, lr=1e-5, log_rollouts=False, log_difficulty="none")
    m.set_policy(copy.deepcopy(model), tok)
    m.attach(verifier_prompt_set(prompts, reward))
    opt = m.configure_optimizers()
    s_wall, s_cpu = timed(lambda: grpo.step(m.model, opt, m.sampler, m.rollout, m.config, generator=m.gen), reps)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = k * group_size * new_tokens
    return {"rows": k * group_size, "new_tokens": new_tokens, "params_M": n_params / 1e6,
            "rollout_wall_s": r_wall, "rollout_cpu_s": r_cpu, "step_wall_s": s_wall, "step_cpu_s": s_cpu,
            "rollout_tok_per_s": tokens / r_cpu, "us_per_token_per_Mparam": r_cpu / tokens / (n_params / 1e6) * 1e6}


def overlap_gain(model, tok, n_problems: int, reps: int) -> list[dict]:
    """``sample_and_check`` on the code task (the real sandbox) in chunks of 8 prompts, verification overlapped
    with the next chunk's sampling or not: wall and CPU seconds (this process; the sandbox's own processes
    are not counted in CPU)."""
    from pfkit.rollout import sample_and_check
    from pfkit.tasks import codegen

    probs = codegen.generate(n_problems, seed=99)
    run = lambda overlap: sample_and_check(model, tok, probs, 4, max_new_tokens=48, seed=0,  # noqa: E731
                                           batch_prompts=8, overlap=overlap)
    run(False)  # starts the sandbox pool
    out = []
    for _ in range(reps):
        for overlap in (False, True):
            wall, cpu = timed(lambda o=overlap: run(o), 1)
            out.append({"overlap": overlap, "wall_s": wall, "cpu_s": cpu})
    return out


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="two points per sweep (a smoke run)")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from pfkit import models
    from pfkit.tasks import codegen

    _, tok = models.load_policy("embedded")
    prompts = [p.prompt for p in codegen.generate(64, seed=1234)]
    base = build(tok, *MODEL_SHAPES[0])
    batches, lengths, shapes = [16, 64, 128], [16, 48, 96], MODEL_SHAPES
    if args.quick:
        batches, lengths, shapes = [16, 32], [8, 16], MODEL_SHAPES[:2]
    la = os.getloadavg()
    print(f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores "
          f"({'shared: wall times inflated, CPU times steadier' if la[0] > 1 else 'idle'}); "
          f"torch threads {args.threads}; best of {args.reps} per point; group_size 8")
    rows = []
    for b in batches:
        rows.append({"sweep": "batch", "shape": "4x128", **measure(base, tok, prompts, b, 32, args.reps)})
    for t in lengths:
        rows.append({"sweep": "response", "shape": "4x128", **measure(base, tok, prompts, 64 if not args.quick else 16, t, args.reps)})
    for shape in shapes:
        model = base if shape == MODEL_SHAPES[0] else build(tok, *shape)
        rows.append({"sweep": "model", "shape": f"{shape[0]}x{shape[1]}",
                     **measure(model, tok, prompts, 32 if not args.quick else 16, 32 if not args.quick else 8,
                               args.reps)})
    table = pd.DataFrame(rows)
    ov = pd.DataFrame(overlap_gain(base, tok, 16 if args.quick else 32, max(args.reps, 2)))
    med = ov.groupby("overlap")[["wall_s", "cpu_s"]].median()
    print(f"sample-then-verify, {16 if args.quick else 32} code problems x 4 samples x 48 tokens, chunks of 8 "
          f"prompts, real sandbox (median of {len(ov) // 2}): overlap off {med.loc[False, 'wall_s']:.2f} s wall, "
          f"on {med.loc[True, 'wall_s']:.2f} s wall ({med.loc[False, 'wall_s'] / med.loc[True, 'wall_s']:.2f}x)")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
        print(table.to_string(index=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "rollout_scaling.csv", index=False)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns

        long = table.melt(id_vars=["sweep", "rows", "new_tokens", "params_M"],
                          value_vars=["rollout_cpu_s", "step_cpu_s"], var_name="what", value_name="cpu_s")
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, (sweep, x) in zip(axes, (("batch", "rows"), ("response", "new_tokens"), ("model", "params_M"))):
            sns.lineplot(data=long[long.sweep == sweep], x=x, y="cpu_s", hue="what", marker="o", ax=ax)
            ax.set_title(f"cost vs {x}")
        fig.tight_layout()
        fig.savefig(out / "rollout_scaling.png", dpi=110)
        print(f"plot: {out / 'rollout_scaling.png'}; table: {out / 'rollout_scaling.csv'}")
    except Exception as e:  # noqa: BLE001 -- the table is the result; a missing plotting stack is not fatal
        print(f"(no plot: {type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
