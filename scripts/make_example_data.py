"""Build the own-data example: ``data/examples/arithmetic.jsonl`` and the tiny policy that GRPO starts from.

    python scripts/make_example_data.py            # writes data/examples/arithmetic.jsonl + arith_policy/

``configs/grpo_own_data.yaml`` trains GRPO on these. The file uses its own column names
(``uid, question, solution, level``) so the config shows the column mapping; the answers are integers,
checked by the ``numeric`` verifier. Three difficulty levels: one-digit sums, two-digit sums, small
products.

The policy is a 2-layer GPT-2 (~0.1 M parameters) SFT'd on ``Q: ...\\nA: <answer>`` for questions of the
same generator that are *not* in the example file, so its success on the file's prompts comes from
generalisation and spreads over 0..1 (a policy that always or never answers right leaves GRPO nothing to
learn from). Everything is seeded; one thread, so a rerun writes the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "Q: {prompt}\nA:"   # configs/grpo_own_data.yaml uses the same template


def question(level: int, rng: random.Random) -> tuple[str, int]:
    if level == 1:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"What is {a} + {b}?", a + b
    if level == 2:
        a, b = rng.randrange(10, 50), rng.randrange(10, 50)
        return f"What is {a} + {b}?", a + b
    a, b = rng.randrange(2, 13), rng.randrange(2, 10)
    return f"What is {a} * {b}?", a * b


def all_questions() -> dict[str, int]:
    """Every question the generator can ask (100 + 1600 + 88), with its answer."""
    out = {f"What is {a} + {b}?": a + b for a in range(10) for b in range(10)}
    out.update({f"What is {a} + {b}?": a + b for a in range(10, 50) for b in range(10, 50)})
    out.update({f"What is {a} * {b}?": a * b for a in range(2, 13) for b in range(2, 10)})
    return out


def example_rows(n: int = 200, seed: int = 0) -> list[dict]:
    """``n`` distinct questions, levels 1..3 in turn (at most 264: level 3 has 88 questions)."""
    if n > 264:
        raise ValueError(f"the generator has 88 level-3 questions, so at most 264 rows in turn, not {n}")
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        level = len(rows) % 3 + 1
        q, a = question(level, rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"uid": f"arith-{len(rows):03d}", "question": q, "solution": str(a), "level": level})
    return rows


def train_policy(rows: list[dict], out: Path, steps: int, seed: int = 0) -> dict:
    import torch

    from pfkit.models import build_policy, train_tokenizer
    from pfkit.rollout import generate

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    held = {r["question"] for r in rows}
    pairs = [(TEMPLATE.format(prompt=q), f" {a}") for q, a in all_questions().items() if q not in held]
    tok = train_tokenizer([p + c for p, c in pairs] * 2, vocab_size=320)
    model = build_policy(tok, n_layer=2, n_embd=64, n_head=4, n_positions=32)
    enc = []
    for p, c in pairs:
        pi = tok(p, add_special_tokens=False)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        enc.append((pi + ci, [-100] * len(pi) + ci))
    L = max(len(x) for x, _ in enc)
    ids = torch.full((len(enc), L), tok.pad_token_id)
    labels = torch.full((len(enc), L), -100)
    att = torch.zeros(len(enc), L, dtype=torch.long)
    for i, (x, y) in enumerate(enc):  # right padding for teacher forcing
        ids[i, : len(x)], labels[i, : len(y)], att[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        b = torch.randint(len(enc), (64,), generator=g)
        loss = model(input_ids=ids[b], attention_mask=att[b], labels=labels[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    train_s = time.perf_counter() - t0

    # success on the example file's prompts: 8 samples at temperature 1, as GRPO sees them
    from pfkit.tasks.verifiers import numeric_match

    prompts = [TEMPLATE.format(prompt=r["question"]) for r in rows]
    G = 8
    ro = generate(model, tok, prompts, max_new_tokens=4, temperature=1.0, stop=["\n"], seed=seed, group_size=G)
    ok = torch.tensor([numeric_match(t, rows[i // G]["solution"]) for i, t in enumerate(ro.texts)]).view(-1, G)
    per_prompt = ok.mean(1)
    by_level = {lv: float(per_prompt[[i for i, r in enumerate(rows) if r["level"] == lv]].mean()) for lv in (1, 2, 3)}
    stats = {"steps": steps, "train_seconds": round(train_s, 1), "final_loss": round(float(loss), 4),
             "pass@1_T1": round(float(per_prompt.mean()), 4), "samples": G,
             "frac_zero": round(float((per_prompt == 0).float().mean()), 4),
             "frac_one": round(float((per_prompt == 1).float().mean()), 4),
             "pass@1_by_level": {k: round(v, 4) for k, v in by_level.items()},
             "parameters": sum(p.numel() for p in model.parameters())}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "eval.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "examples")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--steps", type=int, default=400, help="SFT steps of the example policy")
    ap.add_argument("--no-policy", action="store_true", help="write the prompt file only")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = example_rows(args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "arithmetic.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} rows to {args.out / 'arithmetic.jsonl'}")
    if not args.no_policy:
        stats = train_policy(rows, args.out / "arith_policy", args.steps)
        print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
