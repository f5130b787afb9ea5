#!/usr/bin/env bash
# GPU smoke check of the vLLM rollout engine (run on a machine with a CUDA GPU and the CUDA vllm wheel):
#   scripts/gpu_smoke.sh                    # the embedded policy (ships with pfkit; nothing is downloaded)
#   POLICY=/models/Qwen2.5-Coder-1.5B-Instruct scripts/gpu_smoke.sh
# Checks, in order (exit 1 at the first failure, 2 when the machine cannot run it):
#   1. vLLM imports and sees a GPU; the engine builds from the policy folder;
#   2. its raw log-probs agree with the trainer's teacher-forced forward (float32: < 1e-3; bf16 gap printed);
#   3. a weight push changes the samples and restoring the weights restores them (seeded);
#   4. one GRPO step runs end to end: `pfkit fit` with engine=vllm on the GPU, tiny limits.
# Prints every figure (build time, log-prob gap, push time, tokens/s, GRPO step time). Budget: ~5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
POLICY=${POLICY:-embedded}
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_ENABLE_V1_MULTIPROCESSING=0

$PY - <<'PYEOF' || exit $?
import sys
try:
    import torch, vllm
except Exception as e:
    print(f"SKIP: vllm does not import ({type(e).__name__}: {e}); pip install pfkit[vllm]"); sys.exit(2)
if not torch.cuda.is_available():
    print("SKIP: no CUDA GPU visible"); sys.exit(2)
print(f"vllm {vllm.__version__}, torch {torch.__version__}, GPU {torch.cuda.get_device_name(0)}")
PYEOF

POLICY="$POLICY" $PY - <<'PYEOF'
import os, time, torch
from pfkit.models import load_policy
from pfkit.rollout import CODE_STOPS, generate, sequence_logprobs
from pfkit.rollout.vllm import VLLMEngine
from pfkit.tasks import codegen

policy = os.environ["POLICY"]
model, tok = load_policy(policy)
model = model.cuda()
dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
t0 = time.perf_counter()
eng = VLLMEngine(model, tok, path=policy, max_new_tokens=64, dtype=dtype, gpu_memory_utilization=0.3)
print(f"1. engine built in {time.perf_counter() - t0:.1f} s (dtype {eng.dtype}, sleep mode: {eng.sleep_supported})")
prompts = [p.prompt for p in codegen.splits(seed=0)["train"][:64]]
t0 = time.perf_counter()
ro = eng.generate(prompts, max_new_tokens=64, group_size=8, stop=CODE_STOPS, seed=0)
dt = time.perf_counter() - t0
with torch.no_grad():
    lp = sequence_logprobs(model, ro.sequences.cuda(), ro.attention_mask.cuda(), ro.response_len).cpu()
m = ro.response_mask.bool()
gap = (lp - ro.logprobs)[m].abs()
print(f"2. log-prob gap vs the trainer's forward ({dtype}): max {gap.max():.2e} mean {gap.mean():.2e}; "
      f"vLLM {int(m.sum()) / dt:.0f} tokens/s ({len(ro)} rows)")
assert dtype != "float32" or gap.max() < 1e-3, "log-probs disagree"
t0 = time.perf_counter()
hf = generate(model, tok, prompts, max_new_tokens=64, group_size=8, stop=CODE_STOPS, seed=0)
torch.cuda.synchronize()
print(f"   pfkit generate: {int(hf.response_mask.sum()) / (time.perf_counter() - t0):.0f} tokens/s")
kw = dict(max_new_tokens=32, group_size=2, stop=CODE_STOPS, seed=1)
before = eng.generate(prompts[:8], **kw)
saved = {k: v.clone() for k, v in model.state_dict().items()}
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
t = eng.push(model)
changed = eng.generate(prompts[:8], **kw).texts != before.texts
model.load_state_dict(saved)
eng.push(model)
restored = eng.generate(prompts[:8], **kw).texts == before.texts
print(f"3. weight push {t * 1e3:.1f} ms; samples changed: {changed}; restored: {restored}")
assert changed and restored, "weight push failed"
eng.close()
PYEOF

rm -rf "$OUT/fit"
$PY -m pfkit.cli fit -c configs/grpo_codegen.yaml --run_dir "$OUT/fit" --model.init_args.policy "$POLICY" \
  --model.init_args.engine vllm --model.init_args.engine_options '{"gpu_memory_utilization": 0.3}' \
  --model.init_args.sampler uniform --model.init_args.prompts_per_step 8 --model.init_args.group_size 8 \
  --data.init_args.n_train 16 --data.init_args.n_val 8 --data.init_args.steps_per_epoch 2 \
  --trainer.accelerator gpu --trainer.devices 1 --trainer.max_steps 2 --trainer.enable_progress_bar false
$PY - "$OUT/fit/metrics.csv" <<'PYEOF'
import sys, pandas as pd
m = pd.read_csv(sys.argv[1]).dropna(subset=["train/step_time"])
cols = [c for c in ["train/step_time", "train/engine_push_time", "train/is_ratio_mean", "train/engine_logp_gap"] if c in m]
print("4. GRPO steps with engine=vllm:\n" + m[cols].to_string(index=False))
assert len(m) == 2
PYEOF
echo "gpu_smoke: all checks passed"
