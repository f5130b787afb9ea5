"""SFT a tiny vision-language policy (LLaVA: CLIP tower + Llama, ``pfkit.models.build_vlm``) on the embedded
visual task (``pfkit.tasks.visual``), then report its held-out accuracy under sampling and the per-prompt
success histogram (the spread GRPO/VADE needs: prompts neither always solved nor never).

    python scripts/train_vlm.py [--minutes 20] [--out pfkit/assets/vlm] [--seed 0]

Reproducible by seed (one thread; data, init and batches from ``--seed``); stops after ``--steps`` or
``--minutes`` of CPU time, whichever first. Held-out = the task's ``val`` split (never trained on).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pfkit.models import build_vlm, num_parameters, train_tokenizer
from pfkit.rollout import vlm
from pfkit.tasks import visual
from pfkit.tasks.verifiers import exact_match

SUFFIX = " Answer:"


def prompt_of(p) -> str:
    return p.question + SUFFIX


def batches(n: int, size: int, gen: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n - size + 1, size):
            yield perm[s:s + size]


def evaluate(model, proc, problems, samples: int, seed: int) -> tuple[float, np.ndarray]:
    """Mean exact-match reward and per-prompt success rates at temperature 1."""
    def check(idx, texts):
        return [exact_match(t, problems[i].answer) for i, t in zip(idx, texts)]

    table = vlm.sample_and_check(model, proc, list(range(len(problems))), samples,
                                 prompts=[prompt_of(p) for p in problems], images=[p.image for p in problems],
                                 check=check, max_new_tokens=4, temperature=1.0, seed=seed, batch_prompts=40)
    per = table.groupby("prompt_id")["score"].mean().to_numpy()
    return float(table["score"].mean()), per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="pfkit/assets/vlm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU-time cap for training")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n_train", type=int, default=3000)
    ap.add_argument("--eval_samples", type=int, default=8)
    ap.add_argument("--image_size", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    sp = visual.splits(seed=0, n_train=args.n_train, n_val=120, size=64)
    train, val = sp["train"], sp["val"]
    corpus = [prompt_of(p) + " " + p.answer for p in train] * 2
    tok = train_tokenizer(corpus, vocab_size=256)
    model, proc = build_vlm(tok, image_size=args.image_size, patch_size=8, vision_width=48, vision_layers=2,
                            width=96, layers=3, heads=4, max_positions=128)
    print(f"params: {num_parameters(model)}; train {len(train)}, held-out {len(val)} problems")

    # everything is tokenised once: [image tokens + question + " Answer:"] then " answer" + EOS
    ids, pix = vlm.encode_prompts(proc, [prompt_of(p) for p in train], [p.image for p in train])
    answers = [tok(" " + p.answer)["input_ids"] + [tok.eos_token_id] for p in train]
    pixel_values = torch.cat([p["pixel_values"] for p in pix])
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    c0, t0 = time.process_time(), time.perf_counter()
    model.train()
    for step, rows in enumerate(batches(len(train), args.batch, gen), start=1):
        seqs = [torch.tensor(ids[i] + answers[i]) for i in rows.tolist()]
        x = vlm.left_pad(seqs, value=tok.pad_token_id)
        mask = vlm.left_pad([torch.ones(len(s), dtype=torch.long) for s in seqs])
        labels = torch.full_like(x, -100)
        for b, i in enumerate(rows.tolist()):
            n = len(answers[i])
            labels[b, -n:] = x[b, -n:]
        out = model(input_ids=x, attention_mask=mask, pixel_values=pixel_values[rows], labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        cpu = time.process_time() - c0
        if step % 100 == 0:
            print(f"step {step} loss {out.loss.item():.3f} cpu {cpu:.0f}s wall {time.perf_counter() - t0:.0f}s",
                  flush=True)
        if step >= args.steps or cpu > args.minutes * 60:
            break
    model.eval()
    acc, per = evaluate(model, proc, val, args.eval_samples, seed=args.seed + 1)
    hist, edges = np.histogram(per, bins=np.linspace(0, 1, args.eval_samples + 2))
    kinds = {}
    for p, s in zip(val, per):
        kinds.setdefault(f"{p.kind}/{p.level}", []).append(s)
    report = {"steps": step, "train_cpu_s": round(time.process_time() - c0, 1), "heldout_accuracy": acc,
              "n_eval": len(val) * args.eval_samples, "eval_samples_per_prompt": args.eval_samples,
              "frac_prompts_never": float((per == 0).mean()), "frac_prompts_always": float((per == 1).mean()),
              "success_histogram": {f"{round(a, 3)}": int(h) for a, h in zip(edges[:-1], hist)},
              "by_kind_level": {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())},
              "seed": args.seed, "params": num_parameters(model)}
    print(json.dumps(report, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    (out / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
