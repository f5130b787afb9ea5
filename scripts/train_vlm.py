"""SFT a tiny vision-language policy (LLaVA: CLIP tower + Llama, ``pfkit.models.build_vlm``) on the embedded
visual task (``pfkit.tasks.visual``), then report its held-out accuracy under sampling and the per-prompt
success histogram (the spread GRPO/VADE needs: prompts neither always solved nor never).

    python scripts/train_vlm.py [--minutes 20] [--out pfkit/assets/vlm] [--seed 0]

Reproducible by seed (one thread; data, init and batches from ``--seed``); stops after ``--steps`` or
``--minutes`` of CPU time, whichever first. Settings were tuned on the task's ``val`` split; the figures
reported are on the ``test`` split (``held-out``), never trained or tuned on. Both are in the report.

The tokenizer is byte-level BPE trained on the task's text with enough merges (``--vocab``) that every
answer ("left", "purple", "7") is one token: with ``vocab_size=256`` (no merges: one token per byte) and
4 new tokens, "left"/"right"/"above"/"below" (5-6 bytes + EOS) could never be generated, which is why
position questions scored 0. The evaluation's ``max_new_tokens`` is the longest answer's token count + 1
(EOS), written to the report (``max_new_tokens``) for GRPO configs to use.
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


def evaluate(model, proc, problems, samples: int, seed: int, max_new_tokens: int) -> tuple[float, np.ndarray]:
    """Mean exact-match reward and per-prompt success rates at temperature 1."""
    def check(idx, texts):
        return [exact_match(t, problems[i].answer) for i, t in zip(idx, texts)]

    table = vlm.sample_and_check(model, proc, list(range(len(problems))), samples,
                                 prompts=[prompt_of(p) for p in problems], images=[p.image for p in problems],
                                 check=check, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, batch_prompts=40)
    per = table.groupby("prompt_id")["score"].mean().to_numpy()
    return float(table["score"].mean()), per


def summarise(problems, per: np.ndarray, samples: int) -> dict:
    """Accuracy, share of prompts never/always solved and the per-prompt success histogram (one bin per
    possible success count 0..samples), overall and per question kind; accuracy per (kind, level)."""
    def block(rates):
        counts = np.bincount(np.rint(rates * samples).astype(int), minlength=samples + 1)
        return {"accuracy": round(float(np.mean(rates)), 4), "n_prompts": int(len(rates)),
                "frac_prompts_never": round(float(np.mean(rates == 0)), 4),
                "frac_prompts_always": round(float(np.mean(rates == 1)), 4),
                "success_histogram": {f"{k}/{samples}": int(c) for k, c in enumerate(counts)}}

    kinds, levels = {}, {}
    for p, r in zip(problems, per):
        kinds.setdefault(p.kind, []).append(r)
        levels.setdefault(f"{p.kind}/{p.level}", []).append(r)
    return {**block(per), "by_kind": {k: block(np.array(v)) for k, v in sorted(kinds.items())},
            "by_kind_level": {k: round(float(np.mean(v)), 3) for k, v in sorted(levels.items())}}


def test_only(out: Path) -> int:
    """The held-out (test) figures of a model trained and tuned with ``--no_test``: the same evaluation
    (seed ``seed + 2``) the full command runs, so the report is what one command would have written."""
    from pfkit.models import load_vlm

    torch.set_num_threads(1)
    report = json.loads((out / "train_report.json").read_text())
    samples = report["eval_samples_per_prompt"]
    model, proc = load_vlm(out)
    test = visual.splits(seed=0, n_train=1, n_val=120, n_test=240, size=64)["test"]
    acc, per = evaluate(model, proc, test, samples, seed=report["seed"] + 2, max_new_tokens=report["max_new_tokens"])
    report.update(heldout_split="test", heldout_accuracy=acc, n_eval=len(test) * samples,
                  heldout=summarise(test, per, samples))
    print(json.dumps({k: report[k] for k in ("heldout_accuracy", "n_eval", "heldout")}, indent=1))
    (out / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="pfkit/assets/vlm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU-time cap for training")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n_train", type=int, default=3000)
    ap.add_argument("--eval_samples", type=int, default=8)
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--patch_size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=400, help="BPE vocabulary (answers must be one token each)")
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--vision_width", type=int, default=48)
    ap.add_argument("--vision_layers", type=int, default=2)
    ap.add_argument("--pixel_mean", type=float, default=1.0,
                    help="image normalisation centre (1.0: the white background maps to 0)")
    ap.add_argument("--vision_init", type=float, default=0.5,
                    help="std of the vision tower's position embeddings; patch projection at 1/sqrt(fan-in) "
                         "(0: CLIP's own init)")
    ap.add_argument("--no_test", action="store_true", help="tuning: evaluate on val only, do not touch test")
    ap.add_argument("--test_only", action="store_true",
                    help="evaluate the model already in --out on the held-out test split (after tuning with "
                         "--no_test) and add it to its train_report.json; no training")
    args = ap.parse_args(argv)
    if args.test_only:
        return test_only(Path(args.out))
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    sp = visual.splits(seed=0, n_train=args.n_train, n_val=120, n_test=240, size=64)
    train, val, test = sp["train"], sp["val"], sp["test"]
    corpus = [prompt_of(p) + " " + p.answer for p in train] * 2
    tok = train_tokenizer(corpus, vocab_size=args.vocab)
    answer_lens = {a: len(tok(" " + a)["input_ids"]) for a in sorted({p.answer for p in train})}
    max_new_tokens = max(answer_lens.values()) + 1  # the answer + EOS
    model, proc = build_vlm(tok, image_size=args.image_size, patch_size=args.patch_size,
                            vision_width=args.vision_width, vision_layers=args.vision_layers,
                            width=args.width, layers=args.layers, heads=4, max_positions=128)
    if args.pixel_mean is not None:
        # the images are mostly white background: centred at 0.5 every background patch is the same large
        # vector and the objects a small change on it; centred at white the background is 0 and only the
        # objects (and the patch positions) reach the vision tower
        proc.image_processor.image_mean = [args.pixel_mean] * 3
    if args.vision_init:
        # CLIP's init (std 0.02 for the patch projection and the position embeddings) left the image features
        # of different images nearly equal (std 0.017 across images after 600 steps, answer loss the same with
        # the images shuffled): give patch contents unit-scale projections and positions a comparable scale
        emb = model.model.vision_tower.embeddings
        with torch.no_grad():
            w = emb.patch_embedding.weight
            w.normal_(0.0, (w[0].numel()) ** -0.5)
            emb.position_embedding.weight.normal_(0.0, args.vision_init)
    print(f"params: {num_parameters(model)}; vocab {len(tok)}; answer tokens {answer_lens}; "
          f"train {len(train)}, val {len(val)}, held-out test {len(test)} problems")

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
    train_cpu = round(time.process_time() - c0, 1)
    S = args.eval_samples
    _, per_val = evaluate(model, proc, val, S, seed=args.seed + 1, max_new_tokens=max_new_tokens)
    report = {"steps": step, "train_cpu_s": train_cpu, "seed": args.seed, "params": num_parameters(model),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "no_test")},
              "max_new_tokens": max_new_tokens, "eval_samples_per_prompt": S, "temperature": 1.0,
              "val": summarise(val, per_val, S)}
    if not args.no_test:
        acc, per = evaluate(model, proc, test, S, seed=args.seed + 2, max_new_tokens=max_new_tokens)
        held = summarise(test, per, S)
        report.update(heldout_split="test", heldout_accuracy=acc, n_eval=len(test) * S, heldout=held)
    print(json.dumps(report, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    (out / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
