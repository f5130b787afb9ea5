"""Rollout speed: ``pfkit.rollout.generate`` vs Hugging Face ``model.generate``, same model, same work.

    python benchmarks/rollout.py [--batch 64] [--new-tokens 48] [--reps 5] [--threads 1] [--policy embedded]

Both sample ``batch`` prompts x ``new-tokens`` tokens from the embedded policy (``pfkit/assets/policy``; an
equal-sized random GPT-2 when it is absent) with temperature 1.0 and top-p 0.9 (PF-PPO's settings), each
with its KV cache. Lengths are made equal on both sides with ``min_new_tokens = max_new_tokens`` (EOS
banned), so both produce exactly ``batch x new_tokens`` tokens. Fairness of outputs: pfkit also returns
per-token log-probs and decoded texts; HF is timed twice, tokens only (``generate`` as is, the stricter
baseline the headline ratio uses) and with the per-token log-probs a rollout needs (``output_logits=True``
+ log-softmax/gather of the raw logits, the cheapest way to get them from ``generate``). Repetitions are
interleaved (HF, HF+logp, pfkit, ...) so machine load hits all alike; medians are reported.

Times are reported as wall clock and as this process's CPU time: on a machine shared with other jobs,
wall time mostly measures waiting for a core, and CPU time is the steadier measure of the work done.

Also asserted: pfkit's log-probs equal a teacher-forced pass (``sequence_logprobs``) and a plain
``model(...)`` forward within 1e-4.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pfkit.rollout import generate, sequence_logprobs


def load_model(path: str = "embedded"):
    from pfkit import models

    try:
        model, tok = models.load_policy(path)
        return model, tok, "embedded policy (pfkit/assets/policy)" if path == "embedded" else f"policy {path}"
    except Exception as e:  # noqa: BLE001 -- absent/unreadable checkpoint: benchmark an equal-sized stand-in
        if path != "embedded":
            raise
        from pfkit.tasks import codegen

        tok = models.train_tokenizer([p.prompt + p.reference for p in codegen.generate(300, seed=1)])
        torch.manual_seed(0)
        model = models.build_policy(tok).eval()
        return model, tok, f"random GPT-2 of the embedded size (no embedded policy: {type(e).__name__})"


def make_prompts(batch: int) -> list[str]:
    from pfkit.tasks import codegen

    problems = codegen.generate(batch, seed=1234)
    return [p.prompt for p in problems]


def hf_generate(model, tok, prompts, args, with_logprobs: bool):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    kw = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.new_tokens,
              min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
    if with_logprobs:
        kw.update(output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode():
        out = model.generate(**enc, **kw)
        if with_logprobs:
            new = out.sequences[:, enc["input_ids"].shape[1]:]
            logits = torch.stack(out.logits, 1).float()
            logp = logits.log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)
            texts = tok.batch_decode(new, skip_special_tokens=True)
            return out.sequences, logp, texts
        return out


def pf_generate(model, tok, prompts, args, seed):
    return generate(model, tok, prompts, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                    temperature=args.temperature, top_p=args.top_p, seed=seed)


def check_logprobs(model, r) -> float:
    lp = sequence_logprobs(model, r.sequences, r.attention_mask, r.response_len)
    pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0) * r.attention_mask
    with torch.no_grad():
        logits = model(input_ids=r.sequences, attention_mask=r.attention_mask, position_ids=pos).logits
    plain = logits[:, :-1].log_softmax(-1).gather(-1, r.sequences[:, 1:, None]).squeeze(-1)[:, -r.response_len:]
    err = max((lp - r.logprobs).abs().max().item(), (plain * r.response_mask - r.logprobs).abs().max().item())
    assert err < 1e-4, f"rollout log-probs differ from a teacher-forced pass by {err:.2e}"
    return err


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (1 by default: on a shared machine two OpenMP threads "
                         "per process stall on each other and swamp the comparison)")
    ap.add_argument("--policy", default="embedded", help="a local checkpoint folder, or 'embedded'")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tok, what = load_model(args.policy)
    prompts = make_prompts(args.batch)
    n_params = sum(p.numel() for p in model.parameters())
    plen = max(len(ids) for ids in tok(prompts)["input_ids"])
    print(f"model: {what}, {n_params / 1e6:.2f} M params; batch {args.batch} x {args.new_tokens} new tokens, "
          f"prompts up to {plen} tokens, temperature {args.temperature}, top-p {args.top_p}, "
          f"{args.threads} threads")

    r = pf_generate(model, tok, prompts, args, seed=0)  # warm-up + correctness
    assert r.response_mask.shape == (args.batch, args.new_tokens) and bool(r.response_mask.all())
    err = check_logprobs(model, r)
    print(f"log-probs vs teacher forcing / plain forward: max |diff| = {err:.1e} (< 1e-4)")
    hf_generate(model, tok, prompts, args, with_logprobs=False)

    n_tok = args.batch * args.new_tokens
    names = ("hf", "hf+logp", "pfkit")
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for rep in range(args.reps):
        for name in names:
            torch.manual_seed(rep)
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "pfkit":
                pf_generate(model, tok, prompts, args, seed=rep)
            else:
                hf_generate(model, tok, prompts, args, with_logprobs=name == "hf+logp")
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    result = {}
    # wall time is what a user waits; CPU time (this process only) is steadier on a shared machine
    for label, times in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"-- {label} time")
        for k in names:
            print(f"{k:>8}: median {n_tok / med[k]:8.0f} tokens/s  ({med[k] * 1e3:.0f} ms per batch; "
                  f"runs {', '.join(f'{t * 1e3:.0f}' for t in times[k])} ms)")
        ratio = statistics.median(h / p for h, p in zip(times["hf"], times["pfkit"]))
        ratio_lp = statistics.median(h / p for h, p in zip(times["hf+logp"], times["pfkit"]))
        print(f"speed-up pfkit / HF generate ({label}): median {ratio:.2f}x "
              f"(with log-probs on the HF side: {ratio_lp:.2f}x); target >= 1.5x")
        result[label] = {"hf_tokens_per_s": n_tok / med["hf"], "hf_logp_tokens_per_s": n_tok / med["hf+logp"],
                         "pfkit_tokens_per_s": n_tok / med["pfkit"], "speedup_vs_hf": ratio,
                         "speedup_vs_hf_logp": ratio_lp}
    return result


if __name__ == "__main__":
    main()
