"""Batched sampling with a KV cache, and log-probs of given sequences under any causal LM.

Two functions carry the RL loop:

* :func:`generate` samples responses for a batch of prompts and returns a :class:`Rollout` holding the
  token ids, masks, per-token log-probs of the sampling policy and the decoded (stop-cut) texts.
* :func:`sequence_logprobs` scores given sequences under any model (policy, reference, old policy) in
  one teacher-forced pass. Its output equals ``Rollout.logprobs`` for the policy that sampled them
  (tested to 1e-4), so PPO/GRPO ratios start at exactly 1.

Conventions shared by both (they must agree, or importance ratios drift):

* Prompts are **left-padded**; ``position_ids = cumsum(attention_mask) - 1`` (0 on pads), as in
  ``transformers`` ``generate``. So a prompt's tokens get the same positions whatever its padding.
* ``logprobs`` are log-softmax of the **raw** logits (temperature 1, no top-p) at the chosen token:
  the distribution of the unmodified model, directly comparable with :func:`sequence_logprobs`.
  ``Rollout.sample_logprobs`` holds the log-probs under the distribution actually sampled from
  (temperature and top-p applied; 0 under greedy decoding), for exact off-policy corrections.

Speed: GPT-2-family models (``model_type == "gpt2"``, e.g. the embedded policy) run through a hand-rolled
decode loop over the model's own weights, with no per-step HF overhead (mask building, cache objects,
logits processors): rows are sorted by prompt length and split into groups, each with its own
pre-allocated KV cache trimmed to its longest prompt (prefill and attention skip most padding); the dense
layers of a step run over the whole batch; single-query attention is matmul-softmax-matmul; sampling
inverts the CDF with one uniform per row, and top-p uses a partial sort. Finished rows are dropped from the
batch (caches compacted once a quarter of the rows are done) and the loop exits when all are done. Any
other causal LM runs through its own ``forward`` with a ``DynamicCache`` (same results, less speed).
``benchmarks/rollout.py`` compares against ``model.generate``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

__all__ = [
    "CODE_STOPS",
    "DEDENT",
    "Rollout",
    "find_stop",
    "generate",
    "sequence_logprobs",
    "top_p_filter",
]

#: A line that starts with a non-space character: the end of a function body in generated code.
#: The match starts at the newline, so the newline is cut too.
DEDENT = re.compile(r"\n\S")
#: Stop patterns for HumanEval-style completions of a function body.
CODE_STOPS = ("\ndef", "\nclass", "\nif __name__", "\nprint", DEDENT)


@dataclass
class Rollout:
    """A batch of sampled responses.

    Shapes: ``B`` rows (prompt-major when ``n > 1``: prompt 0's samples first), ``P`` = padded prompt
    length, ``T`` = longest kept response (``<= max_new_tokens``).

    ``sequences [B, P+T]``: left-padded prompt then response; positions past a row's kept response hold
    the pad id. ``attention_mask [B, P+T]``: 1 on real prompt tokens and kept response tokens.
    ``response_mask [B, T]``: 1 up to and including the last kept token (an EOS is kept; a stop string is
    not, see :func:`generate`). ``logprobs [B, T]``: raw-model (temperature-1) log-probs of the response
    tokens, 0 where masked. ``sample_logprobs [B, T]``: log-probs under the sampling distribution
    (temperature/top-p), 0 where masked or greedy. ``texts``: decoded responses, special tokens skipped,
    cut before the first stop string. ``finish_reasons``: ``"eos" | "stop" | "length"`` per row.
    ``prompt_index [B]``: which input prompt each row answers.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    sample_logprobs: torch.Tensor | None = None
    finish_reasons: list[str] = field(default_factory=list)
    prompt_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:
        """Kept tokens per row ``[B]``."""
        return self.response_mask.sum(-1)


# ----------------------------------------------------------------------------------------------- sampling


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most-probable tokens whose mass reaches ``top_p``.

    A token is kept iff the total probability of the tokens ranked strictly before it is ``< top_p``
    (so the top token is always kept; same rule as ``transformers``' ``TopPLogitsWarper``). Returns a
    copy of ``logits`` with removed entries set to ``-inf``.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    remove_sorted = mass_before >= top_p
    remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _sample(logits, temperature, top_p, generator, banned, top_k_first: int = 64, state: dict | None = None):
    """One decoding step: returns (tokens, raw log-prob, sampling log-prob), all ``[b]``.

    Draws one uniform per row and inverts the CDF (``searchsorted``) instead of ``multinomial``, which
    draws one exponential per vocabulary entry. Top-p works row by row in stages: the 16, then
    ``top_k_first`` most probable tokens (partial sorts), and a full sort only for the rows whose nucleus
    is wider. The kept set is exactly :func:`top_p_filter`'s. ``state`` (a dict kept across the steps of
    one call) remembers when most rows needed the full sort, so flat distributions (an untrained model)
    go straight to it.
    """
    logits = logits.float()
    raw = logits
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    b, V = logits.shape
    if temperature == 0.0:
        tokens = logits.argmax(-1)
        samp = torch.zeros(b, dtype=logits.dtype, device=logits.device)
    else:
        probs = (logits / temperature if temperature != 1.0 else logits).softmax(-1)
        gdev = generator.device if generator is not None else logits.device
        u = torch.rand(b, 1, generator=generator, device=gdev, dtype=probs.dtype).to(logits.device)
        if top_p >= 1.0:
            cum = probs.cumsum(-1)
            tokens = torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=V - 1)
            p = probs.gather(-1, tokens)
            if bool((p == 0).any()):  # float rounding landed on a zero-probability tail: take the mode
                tokens = torch.where(p > 0, tokens, probs.argmax(-1, keepdim=True))
                p = probs.gather(-1, tokens)
            tokens, samp = tokens.squeeze(-1), p.squeeze(-1).log()
        else:
            tokens, samp = _nucleus(probs, u, top_p, top_k_first, state)
    lse = torch.logsumexp(raw, dim=-1)
    return tokens, raw.gather(-1, tokens[:, None]).squeeze(-1) - lse, samp


def _nucleus(probs, u, top_p, top_k_first, state):
    b, V = probs.shape
    stages = [min(16, top_k_first), top_k_first]
    if state is not None and state.get("full_sort", False):
        stages = []
    stages = [k for k in stages if k < V] + [V]
    tokens = torch.empty(b, dtype=torch.long, device=probs.device)
    samp = torch.empty(b, dtype=probs.dtype, device=probs.device)
    rows = None  # None = all rows
    for k in stages:
        sub = probs if rows is None else probs[rows]
        if k < V:
            vals, idx = sub.topk(k, dim=-1)
        else:
            vals, idx = sub.sort(dim=-1, descending=True)
        cum = vals.cumsum(-1)
        ok = cum[:, -1] >= top_p if k < V else torch.ones_like(cum[:, -1], dtype=torch.bool)
        all_ok = bool(ok.all())
        if not all_ok:
            vals, idx, cum = vals[ok], idx[ok], cum[ok]
        here = (torch.arange(b, device=probs.device) if rows is None else rows)
        here_ok = here if all_ok else here[ok]
        n_keep = ((cum - vals) < top_p).sum(-1, keepdim=True)  # kept tokens form a prefix
        z = cum.gather(-1, n_keep - 1)
        pos = torch.minimum(torch.searchsorted(cum, u[here_ok] * z, right=True), n_keep - 1)
        tokens[here_ok] = idx.gather(-1, pos).squeeze(-1)
        samp[here_ok] = (vals.gather(-1, pos) / z).log().squeeze(-1)
        if all_ok:
            break
        rows = here[~ok]
        if k == top_k_first and state is not None and rows.numel() * 2 > b:
            state["full_sort"] = True  # most rows are flat: skip the partial sorts from now on
    return tokens, samp


# ------------------------------------------------------------------------------------------- stop strings


def find_stop(text: str, stops: Sequence[str | re.Pattern], newline_before: bool = False) -> int | None:
    """Character index in ``text`` where the earliest stop pattern begins, or ``None``.

    ``stops`` are plain strings or compiled regexes. With ``newline_before`` (the prompt ends with a
    newline) the search runs over ``"\\n" + text`` so that a response opening with ``def``/a dedent is
    caught; a match must still end inside ``text``, and one starting on that virtual newline gives 0.
    """
    offset = 1 if newline_before else 0
    hay = "\n" + text if newline_before else text
    best = None
    for stop in stops:
        if isinstance(stop, str):
            start = hay.find(stop)
            while start >= 0 and start + len(stop) <= offset:
                start = hay.find(stop, start + 1)
            if start >= 0:
                best = start if best is None else min(best, start)
        else:
            for m in stop.finditer(hay):
                if m.end() > offset:
                    best = m.start() if best is None else min(best, m.start())
                    break
    return None if best is None else max(0, best - offset)


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _piece_table(tokenizer) -> list[str]:
    """Per-token decoded strings, used only to *detect* stops cheaply during decoding."""
    try:
        table = _PIECES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        table = None
    if table is None:
        table = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        try:
            _PIECES[tokenizer] = table
        except TypeError:
            pass
    return table


def _kept_tokens(tokenizer, ids: list[int], cut: int) -> int:
    """Number of leading tokens that contribute at least one character to ``text[:cut]``.

    Token j covers characters ``[len(decode(ids[:j])), len(decode(ids[:j+1])))``; it is kept iff that
    span starts before ``cut``. Binary search over prefixes (decoded length grows with the prefix).
    """
    lo, hi = 0, len(ids)  # answer = smallest j with len(decode(ids[:j])) >= cut
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= cut:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ------------------------------------------------------------------------------------------------ runners


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _HFRunner:
    """Any causal LM: its own forward with a DynamicCache (positions/masks passed explicitly)."""

    def __init__(self, model):
        self.model = model
        self.cache_kw = _cache_kwarg(model)

    def prefill(self, ids, mask, pos, max_new):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        self.cache = getattr(out, "cache", None) or out.past_key_values
        self.mask = mask
        return out.logits[:, -1]

    def step(self, tokens, pos):
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=pos[:, None],
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        return out.logits[:, -1]

    def select(self, rows):
        if not hasattr(self.cache, "batch_select_indices"):
            return False
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        return True

    def expand(self, repeats):
        return False


class _GPT2Runner:
    """GPT-2 forward written out over the model's weights, with a pre-allocated KV cache.

    Mirrors ``GPT2LMHeadModel`` in eval mode (no dropout): pre-LN blocks, Conv1D projections
    (``x @ W + b``), scaled dot-product attention, tied LM head.
    """

    @staticmethod
    def supports(model) -> bool:
        cfg = getattr(model, "config", None)
        return (
            cfg is not None
            and getattr(cfg, "model_type", None) == "gpt2"
            and not getattr(cfg, "add_cross_attention", False)
            and hasattr(model, "transformer")
            and hasattr(model, "lm_head")
            and type(model).__name__ == "GPT2LMHeadModel"
        )

    def __init__(self, model):
        from transformers.activations import ACT2FN

        cfg = model.config
        tr = model.transformer
        self.wte, self.wpe = tr.wte.weight, tr.wpe.weight
        self.head = model.lm_head.weight
        self.n_head = cfg.n_head
        self.d = cfg.n_embd
        self.dh = self.d // self.n_head
        act = cfg.activation_function
        # one fused kernel instead of the formula's tanh/pow/mul chain (same function)
        if act in ("gelu_new", "gelu_pytorch_tanh"):
            self.act = lambda x: F.gelu(x, approximate="tanh")
        elif act == "gelu":
            self.act = F.gelu
        else:
            self.act = ACT2FN[act]
        self.layers = []
        for i, block in enumerate(tr.h):
            scale = 1.0 / math.sqrt(self.dh) if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            self.layers.append((block.ln_1, block.attn.c_attn, block.attn.c_proj, scale, block.ln_2,
                                block.mlp.c_fc, block.mlp.c_proj))
        self.ln_f = tr.ln_f

    @staticmethod
    def _lin(conv, x):
        return torch.addmm(conv.bias, x, conv.weight)

    def _heads(self, t, b, s):
        return t.view(b, s, self.n_head, self.dh).transpose(1, 2)

    def prefill(self, ids, mask, pos, max_new):
        """Prompts in groups of similar length (rows are sorted by length by :func:`generate`).

        Each group is trimmed to its own longest prompt and keeps its own KV cache, so neither the
        prefill nor the per-step attention spends time on padding of much longer prompts elsewhere in
        the batch. The dense layers of a decoding step still run over the whole batch at once.
        """
        b = ids.shape[0]
        lens = mask.sum(-1).tolist()
        size = max(8, -(-b // 4))
        self.groups, logits = [], []
        for start in range(0, b, size):
            end = min(b, start + size)
            P = max(lens[start:end])
            g = SimpleNamespace(n=end - start, P=P, slot=P)
            logits.append(self._prefill_group(g, ids[start:end, -P:], mask[start:end, -P:],
                                              pos[start:end, -P:], P + max_new))
            self.groups.append(g)
        return torch.cat(logits)

    def _prefill_group(self, g, ids, mask, pos, max_len):
        b, s = ids.shape
        dev = ids.device
        x = F.embedding(ids, self.wte) + F.embedding(pos, self.wpe)
        keymask = mask.bool()
        causal = torch.ones(s, s, dtype=torch.bool, device=dev).tril()
        # a left-pad query attends only to itself, so no row is fully masked (NaN-free pads)
        attn_mask = (causal & keymask[:, None, :]) | torch.eye(s, dtype=torch.bool, device=dev)
        attn_mask = attn_mask[:, None]
        g.k = [x.new_empty(b, self.n_head, max_len, self.dh) for _ in self.layers]
        g.v = [x.new_empty(b, self.n_head, max_len, self.dh) for _ in self.layers]
        # additive key bias for decoding: -inf on left pads, 0 on real and generated tokens
        g.bias = torch.zeros(b, 1, 1, max_len, dtype=x.dtype, device=dev)
        g.bias[:, 0, 0, :s].masked_fill_(~keymask, float("-inf"))
        last = len(self.layers) - 1
        for li, (ln1, c_attn, c_proj, scale, ln2, c_fc, m_proj) in enumerate(self.layers):
            h = ln1(x).view(b * s, self.d)
            q, k, v = self._lin(c_attn, h).view(b, s, 3 * self.d).split(self.d, dim=-1)
            q, k, v = self._heads(q, b, s), self._heads(k, b, s), self._heads(v, b, s)
            g.k[li][:, :, :s] = k
            g.v[li][:, :, :s] = v
            if li == last:
                # the top layer only has to produce the next-token logits: its K/V above are all the cache
                # needs, so attention output and MLP run for the last position alone (same result, less work)
                q, attn_mask, x, s = q[:, :, -1:], attn_mask[:, :, -1:], x[:, -1:], 1
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
            a = a.transpose(1, 2).reshape(b * s, self.d)
            x = x + self._lin(c_proj, a).view(b, s, self.d)
            h = ln2(x).view(b * s, self.d)
            x = x + self._lin(m_proj, self.act(self._lin(c_fc, h))).view(b, s, self.d)
        return F.linear(self.ln_f(x[:, -1]), self.head)

    def step(self, tokens, pos):
        b = tokens.shape[0]
        H, dh = self.n_head, self.dh
        x = F.embedding(tokens, self.wte) + F.embedding(pos, self.wpe)  # [b, d]
        for li, (ln1, c_attn, c_proj, scale, ln2, c_fc, m_proj) in enumerate(self.layers):
            q, k, v = self._lin(c_attn, ln1(x)).split(self.d, dim=-1)
            q = (q * scale).view(b, H, 1, dh)
            k, v = k.view(b, H, dh), v.view(b, H, dh)
            a = x.new_empty(b, self.d)
            start = 0
            for g in self.groups:
                end, t = start + g.n, g.slot
                K, V = g.k[li], g.v[li]
                K[:, :, t] = k[start:end]
                V[:, :, t] = v[start:end]
                # one query per row: plain matmul-softmax-matmul beats the SDPA kernels here
                scores = torch.matmul(q[start:end], K[:, :, : t + 1].transpose(-1, -2)) + g.bias[..., : t + 1]
                a[start:end] = torch.matmul(scores.softmax(-1), V[:, :, : t + 1]).view(g.n, self.d)
                start = end
            x = x + self._lin(c_proj, a)
            x = x + self._lin(m_proj, self.act(self._lin(c_fc, ln2(x))))
        for g in self.groups:
            g.slot += 1
        return F.linear(self.ln_f(x), self.head)

    def select(self, rows):
        groups, start = [], 0
        for g in self.groups:
            end = start + g.n
            local = rows[(rows >= start) & (rows < end)] - start
            start = end
            if local.numel() == 0:
                continue
            if local.numel() < g.n:
                g.k = [k[local] for k in g.k]
                g.v = [v[local] for v in g.v]
                g.bias = g.bias[local]
                g.n = local.numel()
            groups.append(g)
        self.groups = groups
        return True

    def expand(self, repeats):
        """Repeat every row ``repeats`` times (prompt shared by ``n`` samples is prefilled once)."""
        for g in self.groups:
            g.k = [k.repeat_interleave(repeats, 0) for k in g.k]
            g.v = [v.repeat_interleave(repeats, 0) for v in g.v]
            g.bias = g.bias.repeat_interleave(repeats, 0)
            g.n *= repeats
        return True


# ----------------------------------------------------------------------------------------------- generate


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_(min=0) * mask.long()


def _eos_ids(tokenizer, model, eos_token_id) -> list[int]:
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [int(e) for e in eos_token_id] if isinstance(eos_token_id, (list, tuple)) else [int(eos_token_id)]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str | re.Pattern] = (),
    seed: int | None = None,
    n: int = 1,
    min_new_tokens: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    stop_in_mask: bool = False,
) -> Rollout:
    """Sample ``n`` responses per prompt (rows prompt-major) with a KV cache.

    * ``temperature=0`` is greedy decoding; ``top_p < 1`` is nucleus sampling (:func:`top_p_filter`).
    * Ending: a row ends at EOS (the EOS token is kept in ``response_mask``; ``eos_token_id`` defaults to
      the tokenizer's), at a stop pattern, or after ``max_new_tokens``. ``min_new_tokens`` bans EOS
      from the *sampling* distribution for that many steps (as ``transformers``' ``min_new_tokens``;
      the raw ``logprobs`` are unchanged).
    * Stop patterns (strings or compiled regexes, e.g. :data:`CODE_STOPS`) are searched in the decoded
      response (see :func:`find_stop` for the prompt-ending newline). ``texts`` are cut exactly where the
      earliest match begins. ``response_mask`` keeps exactly the tokens that contribute at least one
      character to the kept text: a token in which the stop string begins mid-token (e.g. ``"x\\n"``
      before ``"def"``) is kept, since it carries text before the stop; a token that starts with the stop
      string is dropped with everything after it. ``stop_in_mask=True`` instead keeps tokens up to and
      including the one that completes the stop match (the text is cut the same way).
    * Determinism: all randomness comes from one ``torch.Generator`` seeded with ``seed`` (or the given
      ``generator``); same seed, same model and inputs -> same tokens. ``seed=None`` draws a fresh seed.
    * ``backend``: ``"auto"`` (fast GPT-2 path when possible), ``"gpt2"`` or ``"hf"`` (the model's forward).

    Runs under ``torch.inference_mode`` with the model in eval mode (restored afterwards).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single string; wrap it: [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if isinstance(stop, (str, re.Pattern)):
        stop = (stop,)
    stop = tuple(stop)
    if backend not in ("auto", "gpt2", "hf"):
        raise ValueError(f"backend must be 'auto', 'gpt2' or 'hf', got {backend!r}")
    if backend == "gpt2" and not _GPT2Runner.supports(model):
        raise ValueError("backend='gpt2' needs a transformers GPT2LMHeadModel; use backend='auto' or 'hf'")

    device = next(model.parameters()).device
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    # --- tokenise and left-pad
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("a prompt tokenised to zero tokens; every prompt needs at least one token")
    P = max(len(e) for e in encoded)
    n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if n_pos is not None and P + max_new_tokens > n_pos:
        raise ValueError(
            f"longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{n_pos} positions; shorten the prompts or lower max_new_tokens"
        )
    # rows are processed sorted by prompt length (the fast path groups similar lengths), then unsorted
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    rank = [0] * len(prompts)
    for r, i in enumerate(order):
        rank[i] = r
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    pmask = torch.zeros((len(prompts), P), dtype=torch.long)
    for r, i in enumerate(order):
        e = encoded[i]
        ids[r, P - len(e):] = torch.tensor(e)
        pmask[r, P - len(e):] = 1
    ids, pmask = ids.to(device), pmask.to(device)

    if generator is None:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    banned = torch.tensor(eos, device=device) if (eos and min_new_tokens > 0) else None

    with torch.inference_mode(), _eval_mode(model):
        use_fast = backend == "gpt2" or (backend == "auto" and _GPT2Runner.supports(model))
        runner = _GPT2Runner(model) if use_fast else _HFRunner(model)
        B = len(prompts) * n
        ids_u, pmask_u = ids, pmask
        if n > 1:
            ids, pmask = ids.repeat_interleave(n, 0), pmask.repeat_interleave(n, 0)
        prompt_lens = pmask.sum(-1)
        if n > 1 and use_fast:  # prefill each distinct prompt once, then share its cache
            logits = runner.prefill(ids_u, pmask_u, _positions(pmask_u), max_new_tokens)
            runner.expand(n)
            logits = logits.repeat_interleave(n, 0)
        else:
            logits = runner.prefill(ids, pmask, _positions(pmask), max_new_tokens)

        resp = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        raw_lp = torch.zeros((B, max_new_tokens), device=device)
        samp_lp = torch.zeros((B, max_new_tokens), device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        gen_len = torch.zeros(B, dtype=torch.long, device=device)  # tokens really sampled per row
        active = torch.arange(B, device=device)  # global row of each runner row
        eos_t = torch.tensor(eos, device=device) if eos else None
        newline_before = [prompts[order[r // n]].endswith("\n") for r in range(B)]
        pieces = _piece_table(tokenizer) if stop else None
        approx = [""] * B
        search_from = [0] * B
        steps = 0
        sample_state: dict = {}
        for t in range(max_new_tokens):
            tok, lp, slp = _sample(logits, temperature, top_p, generator, banned if t < min_new_tokens else None,
                                   state=sample_state)
            resp[active, t] = tok
            gen_len[active] = t + 1
            raw_lp[active, t] = lp
            samp_lp[active, t] = slp
            steps = t + 1
            finished = torch.isin(tok, eos_t) if eos_t is not None else torch.zeros_like(tok, dtype=torch.bool)
            if stop:
                rows_list = active.tolist()
                fin_list = finished.tolist()
                done_list = done[active].tolist()
                for j, (row, tk) in enumerate(zip(rows_list, tok.tolist())):
                    if fin_list[j] or done_list[j]:
                        continue
                    approx[row] += pieces[tk]
                    if find_stop(approx[row][search_from[row]:], stop, newline_before[row] and
                                 search_from[row] == 0) is not None:
                        exact = tokenizer.decode(resp[row, : t + 1].tolist(), skip_special_tokens=True)
                        if find_stop(exact, stop, newline_before[row]) is not None:
                            fin_list[j] = True
                        else:  # approximate pieces fooled us; look further on
                            search_from[row] = max(0, len(approx[row]) - 1)
                finished = torch.tensor(fin_list, dtype=torch.bool, device=device)
            done[active[finished]] = True
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            keep = ~finished
            # drop finished rows from the batch; compact the cache only when it pays (>= 1/4 finished)
            if not bool(keep.all()):
                n_fin_total = int((done[active]).sum())
                if n_fin_total * 4 >= active.numel():
                    live = (~done[active]).nonzero().squeeze(-1)
                    if runner.select(live):
                        active = active[live]
                        tok = tok[live]
            pos = prompt_lens[active] + t
            logits = runner.step(tok, pos)
    # back to input order (row i*n + j = prompt i, sample j); indexing also copies the tensors out of
    # inference mode, which they must leave to enter autograd later (sequence_logprobs under grad)
    back = torch.tensor([rank[i] * n + j for i in range(len(prompts)) for j in range(n)], device=device)
    ids, pmask, resp, raw_lp, samp_lp, gen_len = (x[back] for x in (ids, pmask, resp, raw_lp, samp_lp, gen_len))
    newline_before = [newline_before[r] for r in back.tolist()]
    prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(n)

    # --- exact ends: EOS, stop patterns (on the real decode), length
    resp, raw_lp, samp_lp = resp[:, :steps], raw_lp[:, :steps], samp_lp[:, :steps]
    resp_list = resp.tolist()
    keep_len = []
    texts = []
    reasons = []
    for row, (toks, n_gen) in enumerate(zip(resp_list, gen_len.tolist())):
        toks = toks[:n_gen]  # a row dropped from the batch early holds padding after its end
        end = len(toks)
        reason = "length"
        for j, tk in enumerate(toks):
            if tk in eos:
                end, reason = j + 1, "eos"
                break
        body = toks[: end - 1] if reason == "eos" else toks
        text = tokenizer.decode(body, skip_special_tokens=True)
        cut = find_stop(text, stop, newline_before[row]) if stop else None
        if cut is not None:
            text_cut = text[:cut]
            if stop_in_mask:
                end = _stop_end_tokens(tokenizer, body, text, stop, newline_before[row])
            else:
                end = _kept_tokens(tokenizer, body, cut)
            text, reason = text_cut, "stop"
        keep_len.append(end)
        texts.append(text)
        reasons.append(reason)
    T = max(1, max(keep_len))  # at least one (masked) column, so shapes stay usable if every row is empty
    lens = torch.tensor(keep_len, device=device)
    rmask = (torch.arange(T, device=device)[None, :] < lens[:, None]).long()
    resp = resp[:, :T].masked_fill(rmask == 0, pad_id)
    raw_lp = raw_lp[:, :T] * rmask
    samp_lp = samp_lp[:, :T] * rmask
    return Rollout(
        sequences=torch.cat([ids, resp], dim=1),
        attention_mask=torch.cat([pmask, rmask], dim=1),
        prompt_len=P,
        response_ids=resp,
        response_mask=rmask,
        logprobs=raw_lp,
        texts=texts,
        sample_logprobs=samp_lp,
        finish_reasons=reasons,
        prompt_index=prompt_index,
    )


def _stop_end_tokens(tokenizer, ids, text, stops, newline_before):
    """Tokens needed to cover the whole earliest stop match (for ``stop_in_mask=True``)."""
    for j in range(1, len(ids) + 1):
        if find_stop(tokenizer.decode(ids[:j], skip_special_tokens=True), stops, newline_before) is not None:
            # the match may need the next char (regex lookahead/\S) - it is complete at this prefix
            return j
    return len(ids)


# -------------------------------------------------------------------------------------- sequence_logprobs


def sequence_logprobs(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    *,
    return_entropy: bool = False,
):
    """Log-probs ``[B, response_len]`` of the last ``response_len`` tokens of ``sequences`` under ``model``.

    One batched teacher-forced pass, positions from ``attention_mask`` (left padding as in
    :func:`generate`); masked positions get 0. Gradients flow (call under ``torch.no_grad()`` for a
    reference model). Only the ``response_len + 1`` last positions are projected to the vocabulary
    (``logits_to_keep`` where the model supports it), and log-probs are ``logit[token] - logsumexp``
    so no full log-softmax tensor is kept. The model's train/eval mode is the caller's: dropout in
    train mode makes these differ from the rollout's. With ``return_entropy`` also returns the
    per-token entropy of the (temperature-1) next-token distribution: ``(logprobs, entropy)``.
    """
    if sequences.shape != attention_mask.shape:
        raise ValueError(f"sequences {tuple(sequences.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must have the same shape")
    L = sequences.shape[1]
    if not 0 < response_len < L:
        raise ValueError(f"response_len must be in [1, {L - 1}] for sequences of length {L}, got {response_len}")
    kwargs = {}
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = response_len + 1
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                use_cache=False, **kwargs)
    logits = out.logits[:, -(response_len + 1):-1].float()
    targets = sequences[:, -response_len:]
    lse = torch.logsumexp(logits, dim=-1)
    mask = attention_mask[:, -response_len:].to(logits.dtype)
    logp = (logits.gather(-1, targets[..., None]).squeeze(-1) - lse) * mask
    if not return_entropy:
        return logp
    entropy = (lse - (logits.softmax(-1) * logits).sum(-1)) * mask
    return logp, entropy
