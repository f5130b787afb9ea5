"""Rollout speed: ``pfkit.rollout.generate`` vs Hugging Face ``model.generate``, same model, same work.

    python benchmarks/rollout.py [--batch 64] [--new-tokens 48] [--reps 5] [--threads 1] [--policy embedded]
                                 [--arch gpt2|qwen2|llama]

``--arch qwen2|llama`` swaps in a tiny model of that architecture built from config (random weights, the
embedded policy's size and tokenizer): pfkit then runs its generic path (the model's own modules over a
``StaticCache``) against the same model's ``generate``.

The FLOP floor (:func:`flop_floor`): the matmul FLOPs the batch needs (prefill + decoding, from the config)
divided by the GFLOP/s this core reaches, measured in the same run, on torch matmuls of the same shapes; pfkit's
time is reported as a fraction of it.

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
import os
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


def build_arch(arch: str, tok):
    """A tiny Qwen2 / Llama of the embedded policy's size (4 layers, width 128, 4 heads, 2 KV heads, d_ff
    512), random weights from config: the generic (static-cache) path's workload."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    torch.manual_seed(0)
    cfg = cls[0](vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=384,
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    return cls[1](cfg).eval(), f"tiny {arch} from config (random weights)"


def _rate(fn, flops: float, reps: int = 20) -> float:
    """FLOP/s this core sustains on ``fn`` (best of 3 blocks of ``reps`` calls, by process CPU time)."""
    fn()
    best = float("inf")
    for _ in range(3):
        c0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - c0) / reps)
    return flops / max(best, 1e-9)


def flop_floor(model, batch: int, prompt_lens: list[int], new_tokens: int) -> dict:
    """The matmul FLOPs a rollout of this model and batch needs, and the time they take at the GFLOP/s this
    core reaches on torch matmuls of exactly those shapes (measured now, in this run).

    Counted per layer: the Q/K/V/output projections, the MLP (two matrices, three for gated MLPs), attention
    (scores and weighted values: ``4 * d * cached_len`` per query), and the vocabulary head once per
    sampled token. Prefill: every prompt token through every layer (attention causal, ``2 * d * p^2`` per
    layer and prompt), the head for the last position. Decoding: ``batch`` queries per step over a cache
    of ``prompt + t`` tokens. LayerNorm, activations, softmax and sampling are not counted (they are the
    overhead the floor leaves out), so ``floor tokens/s`` is an upper bound on any decoder's speed here.
    """
    cfg = model.config
    d = getattr(cfg, "n_embd", None) or cfg.hidden_size
    L = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    H = getattr(cfg, "n_head", None) or cfg.num_attention_heads
    kvh = getattr(cfg, "num_key_value_heads", None) or H
    dff = getattr(cfg, "n_inner", None) or getattr(cfg, "intermediate_size", None) or 4 * d
    V = cfg.vocab_size
    dh = d // H
    gated = hasattr(cfg, "intermediate_size") and not hasattr(cfg, "n_inner")
    shapes = [(d, d + 2 * kvh * dh), (d, d)] + ([(d, dff), (d, dff), (dff, d)] if gated else [(d, dff), (dff, d)])
    dense_tok = sum(2 * i * o for i, o in shapes)       # per token per layer
    mean_p = sum(prompt_lens) / len(prompt_lens)
    mean_cache = mean_p + (new_tokens - 1) / 2
    decode_flops = new_tokens * batch * (L * (dense_tok + 4 * d * mean_cache) + 2 * d * V)
    prefill_flops = sum(L * (dense_tok * p + 2 * d * p * p) + 2 * d * V for p in prompt_lens)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    # measured rates on the same shapes: decode rows [batch, in] x [in, out]; prefill rows [sum p, in]
    def mm_time(m, i, o, reps=20):  # seconds for one [m, i] x [i, o] matmul at the measured rate
        a, w = r(m, i), r(i, o)
        return 2 * m * i * o / _rate(lambda: a @ w, 2 * m * i * o, reps)

    dec_t = sum(mm_time(batch, i, o) for i, o in shapes)
    head_t = mm_time(batch, d, V)
    c = int(round(mean_cache))
    q, k, v = r(batch * H, 1, dh), r(batch * H, c, dh), r(batch * H, c, dh)
    att_f = 4 * batch * H * c * dh
    att_t = att_f / _rate(lambda: torch.bmm(torch.bmm(q, k.transpose(1, 2)), v), att_f)
    step_t = L * (dec_t + att_t) + head_t
    n_pre = sum(prompt_lens)
    pre_rate = 2 * n_pre * d * dff / mm_time(n_pre, d, dff, reps=3)
    floor_s = new_tokens * step_t + prefill_flops / pre_rate
    return {"mflop_per_token": (L * (dense_tok + 4 * d * mean_cache) + 2 * d * V) / 1e6,
            "decode_gflop": decode_flops / 1e9, "prefill_gflop": prefill_flops / 1e9,
            "decode_gflops_rate": decode_flops / (new_tokens * step_t) / 1e9, "prefill_gflops_rate": pre_rate / 1e9,
            "floor_s": floor_s, "floor_tokens_per_s": batch * new_tokens / floor_s,
            "decode_floor_s": new_tokens * step_t}


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


def generic_ceiling(model, tok, prompts, args) -> dict:
    """What bounds any decode path that runs the model's own modules (``--arch qwen2|llama``), in CPU seconds
    per batch: the model's ``nn.Linear`` layers alone over the decode steps' shapes (``[batch, 1, in]``,
    ``new_tokens`` times; no attention, norms, RoPE or cache), and pfkit's sampling step alone on this model's
    real next-token logits (with top-p < 1 a flat, untrained distribution needs a full sort each step, as in
    HF's ``TopPLogitsWarper``), and the prefill (one forward of the model over the prompts). What is left of
    pfkit's time after these three is the per-step rest: attention over the cache, norms, RoPE, cache writes
    and Python dispatch through the model's modules."""
    from pfkit.rollout.core import _sample

    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(args.batch, 1, m.in_features) for m in lins]

    def linears():
        for _ in range(args.new_tokens):
            for m, x in zip(lins, xs):
                m(x)

    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.inference_mode():
        logits = model(**enc).logits[:, -1].float()
        gen = torch.Generator().manual_seed(0)

        def sampling():
            state: dict = {}
            for _ in range(args.new_tokens):
                _sample(logits, args.temperature, args.top_p, gen, None, state=state)

        def prefill():
            model(**enc, logits_to_keep=1)

        out = {}
        for name, fn in (("linear_s", linears), ("sampling_s", sampling), ("prefill_s", prefill)):
            fn()
            c0 = time.process_time()
            for _ in range(3):
                fn()
            out[name] = (time.process_time() - c0) / 3
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (1 by default: on a shared machine two OpenMP threads "
                         "per process stall on each other and swamp the comparison)")
    ap.add_argument("--policy", default="embedded", help="a local checkpoint folder, or 'embedded'")
    ap.add_argument("--arch", default="gpt2", choices=("gpt2", "qwen2", "llama"),
                    help="gpt2: the embedded policy (pfkit's own decoder); qwen2/llama: a tiny model of that "
                         "architecture built from config (the generic static-cache path)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tok, what = load_model(args.policy)
    if args.arch != "gpt2":
        model, what = build_arch(args.arch, tok)
    prompts = make_prompts(args.batch)
    n_params = sum(p.numel() for p in model.parameters())
    lens = [len(ids) for ids in tok(prompts)["input_ids"]]
    plen = max(lens)
    print(f"model: {what}, {n_params / 1e6:.2f} M params; batch {args.batch} x {args.new_tokens} new tokens, "
          f"prompts up to {plen} tokens (mean {sum(lens) / len(lens):.0f}), temperature {args.temperature}, "
          f"top-p {args.top_p}, {args.threads} threads")
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f} on "
          f"{os.cpu_count()} cores (> cores: the machine is shared and wall times are inflated)")

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
    floor = flop_floor(model, args.batch, lens, args.new_tokens)
    print(f"FLOP floor: {floor['mflop_per_token']:.2f} MFLOP per sampled token (matmuls, mean cache), "
          f"prefill {floor['prefill_gflop']:.2f} GFLOP + decode {floor['decode_gflop']:.2f} GFLOP; this core "
          f"now: {floor['decode_gflops_rate']:.1f} GFLOP/s on the decode-step shapes, "
          f"{floor['prefill_gflops_rate']:.1f} on the prefill shapes -> floor {floor['floor_s'] * 1e3:.0f} ms "
          f"per batch = {floor['floor_tokens_per_s']:.0f} tokens/s (decode steps alone "
          f"{floor['decode_floor_s'] * 1e3:.0f} ms)")
    result = {"floor": floor}
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
              f"(with log-probs on the HF side: {ratio_lp:.2f}x); target >= {5 if args.arch == 'gpt2' else 2}x")
        frac = floor["floor_s"] / med["pfkit"]
        print(f"pfkit at {frac:.0%} of the FLOP floor ({label} time; HF generate at "
              f"{floor['floor_s'] / med['hf']:.0%}); target >= 50%")
        result[label + "_floor_fraction"] = frac
        result[label] = {"hf_tokens_per_s": n_tok / med["hf"], "hf_logp_tokens_per_s": n_tok / med["hf+logp"],
                         "pfkit_tokens_per_s": n_tok / med["pfkit"], "speedup_vs_hf": ratio,
                         "speedup_vs_hf_logp": ratio_lp}
    if args.arch != "gpt2":
        ceil = generic_ceiling(model, tok, prompts, args)
        hf_cpu = statistics.median(cpu["hf"])
        pf_cpu = statistics.median(cpu["pfkit"])
        fixed = ceil["prefill_s"] + ceil["linear_s"] + ceil["sampling_s"]
        print(f"where pfkit's {pf_cpu * 1e3:.0f} CPU-ms go: prefill (one forward over the padded prompts; pfkit's "
              f"grouped one costs less) {ceil['prefill_s'] * 1e3:.0f}, the decode steps' "
              f"Linear layers {ceil['linear_s'] * 1e3:.0f}, sampling {ceil['sampling_s'] * 1e3:.0f}, the per-step rest "
              f"{(pf_cpu - fixed) * 1e3:.0f} (attention, norms, RoPE, cache, dispatch); with no rest at all pfkit "
              f"would be {hf_cpu / fixed:.2f}x HF ({hf_cpu * 1e3:.0f} ms)")
        result["ceiling"] = ceil
    return result


if __name__ == "__main__":
    main()
