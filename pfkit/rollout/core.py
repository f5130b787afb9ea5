"""Batched sampling with a KV cache, and log-probs of given sequences under any causal LM.

Two functions carry the RL loop:

* :func:`generate` samples responses for a batch of prompts and returns a :class:`Rollout` holding the
  token ids, masks, per-token log-probs of the sampling policy and the decoded (stop-cut) texts.
* :func:`sequence_logprobs` scores given sequences under any model (policy, reference, old policy) in
  one teacher-forced pass. Its output equals ``Rollout.logprobs`` for the policy that sampled them
  (tested to 1e-4), so PPO/GRPO ratios start at exactly 1.

:func:`shared_prefix_logprobs` is :func:`sequence_logprobs` for groups of responses to one prompt (GRPO):
each distinct prompt runs through the model once. The GPT-2 decode runner is in
:mod:`pfkit.rollout.runners`, stop strings in :mod:`pfkit.rollout.stops`, sample-then-verify in
:mod:`pfkit.rollout.check`.

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
batch (caches compacted once a quarter of the rows are done) and the loop exits when all are done. Other
``transformers`` causal LMs (Llama, Qwen2, ...) run their own modules over a pre-allocated ``StaticCache``
with a single-query attention kernel for the decoding steps (:class:`~pfkit.rollout.runners._StaticRunner`);
anything else through its own ``forward`` with a ``DynamicCache`` (same results, less speed).
``benchmarks/rollout.py`` compares against ``model.generate`` and prints the FLOP floor.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pfkit.rollout.runners import _GPT2Runner, _HFRunner, _StaticRunner, cache_kwarg
from pfkit.rollout.stops import _kept_tokens, _piece_table, _stop_end_tokens, find_stop


@dataclass
class Rollout:
    """A batch of sampled responses.

    Shapes: ``B`` rows (prompt-major when ``group_size > 1``: prompt 0's samples first), ``P`` = padded prompt
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

    pad_id: int = 0

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]

    def select(self, rows, *, trim: bool = True) -> Rollout:
        """The rows ``rows`` (indices or a bool mask), in that order; ``trim`` drops prompt columns that are
        padding in every selected row and response columns past the longest selected response (keeping at
        least one), so the selection costs no more compute than its own longest row."""
        rows = torch.as_tensor(rows, device=self.sequences.device)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        P, T = self.prompt_len, self.response_len
        seq, att, rmask = self.sequences[rows], self.attention_mask[rows], self.response_mask[rows]
        p0, t1 = 0, T
        if trim and len(rows):
            p0 = int((att[:, :P].sum(0) > 0).long().argmax()) if P else 0
            t1 = max(1, int(rmask.sum(-1).max()))
        pick = lambda t: None if t is None else t[rows][:, :t1]  # noqa: E731
        keep = torch.cat([torch.arange(p0, P), torch.arange(P, P + t1)]).to(seq.device)
        idx = rows.tolist()
        return Rollout(sequences=seq[:, keep], attention_mask=att[:, keep], prompt_len=P - p0,
                       response_ids=self.response_ids[rows][:, :t1], response_mask=rmask[:, :t1],
                       logprobs=pick(self.logprobs), texts=[self.texts[i] for i in idx],
                       sample_logprobs=pick(self.sample_logprobs),
                       finish_reasons=[self.finish_reasons[i] for i in idx] if self.finish_reasons else [],
                       prompt_index=None if self.prompt_index is None else self.prompt_index[rows],
                       pad_id=self.pad_id)

    def logprobs_under(self, model, rows=None, *, shared_prefix: bool = False, return_entropy: bool = False):
        """Teacher-forced log-probs ``[len(rows), T]`` of rows ``rows`` (all by default) under ``model`` (policy,
        reference, old policy): :func:`sequence_logprobs`, or with ``shared_prefix`` each distinct prompt once
        (:func:`shared_prefix_logprobs`). Gradients flow. A rollout type whose rows carry more than tokens
        (:class:`pfkit.rollout.vlm.VLMRollout`: images) scores them its own way, so trainers need not ask."""
        rows = torch.arange(len(self), device=self.sequences.device) if rows is None else rows
        seq, att = self.sequences[rows], self.attention_mask[rows]
        if shared_prefix:
            return shared_prefix_logprobs(model, seq, att, self.response_len, self.prompt_index[rows],
                                          return_entropy=return_entropy)
        return sequence_logprobs(model, seq, att, self.response_len, return_entropy=return_entropy)

    def groups(self, group_size: int) -> list[Rollout]:
        """Consecutive blocks of ``group_size`` rows (prompt-major: the responses to one prompt), each
        trimmed to its own lengths."""
        if len(self) % group_size:
            raise ValueError(f"{len(self)} rows do not split into groups of {group_size}")
        return [self.select(torch.arange(s, s + group_size)) for s in range(0, len(self), group_size)]

    def to(self, device) -> Rollout:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Rollout(sequences=move(self.sequences), attention_mask=move(self.attention_mask),
                       prompt_len=self.prompt_len, response_ids=move(self.response_ids),
                       response_mask=move(self.response_mask), logprobs=move(self.logprobs), texts=self.texts,
                       sample_logprobs=move(self.sample_logprobs), finish_reasons=self.finish_reasons,
                       prompt_index=move(self.prompt_index), pad_id=self.pad_id)

    @staticmethod
    def cat(parts: Sequence[Rollout]) -> Rollout:
        """Rows of several rollouts (e.g. GRPO groups from different sampling rounds) as one: prompts
        left-padded, responses right-padded to the longest; ``prompt_index`` renumbered so that rows answer
        the same prompt iff they did within their part."""
        parts = list(parts)
        if not parts:
            raise ValueError("Rollout.cat needs at least one rollout")
        pad = parts[0].pad_id
        P = max(r.prompt_len for r in parts)
        T = max(r.response_len for r in parts)

        def both(r, t, value):  # [b, p+t] -> [b, P+T]: prompt left-padded, response right-padded
            return torch.cat([left_pad(t[:, :r.prompt_len], P, value),
                              F.pad(t[:, r.prompt_len:], (0, T - r.response_len), value=value)], dim=1)

        def resp(t, value=0):
            return None if t is None else F.pad(t, (0, T - t.shape[1]), value=value)

        index, offset = [], 0
        for r in parts:
            pi = r.prompt_index if r.prompt_index is not None else torch.arange(len(r))
            uniq, inv = torch.unique(pi, return_inverse=True)
            index.append(inv.to(r.sequences.device) + offset)
            offset += len(uniq)
        has_samp = all(r.sample_logprobs is not None for r in parts)
        return Rollout(sequences=torch.cat([both(r, r.sequences, pad) for r in parts]),
                       attention_mask=torch.cat([both(r, r.attention_mask, 0) for r in parts]), prompt_len=P,
                       response_ids=torch.cat([resp(r.response_ids, pad) for r in parts]),
                       response_mask=torch.cat([resp(r.response_mask) for r in parts]),
                       logprobs=torch.cat([resp(r.logprobs) for r in parts]),
                       texts=[t for r in parts for t in r.texts],
                       sample_logprobs=torch.cat([resp(r.sample_logprobs) for r in parts]) if has_samp else None,
                       finish_reasons=[f for r in parts for f in r.finish_reasons],
                       prompt_index=torch.cat(index), pad_id=pad)


def left_pad(x: torch.Tensor | Sequence[torch.Tensor], width: int | None = None, value: int = 0) -> torch.Tensor:
    """Left-pad to ``width`` columns (default: the longest): a ``[b, w]`` tensor, or a list of 1-D tensors
    (stacked; ``torch.nn.utils.rnn.pad_sequence(padding_side="left")``). The one left-pad in pfkit."""
    if isinstance(x, torch.Tensor):
        return F.pad(x, (width - x.shape[1], 0), value=value) if width is not None else x
    out = torch.nn.utils.rnn.pad_sequence(list(x), batch_first=True, padding_value=value, padding_side="left")
    return out if width is None else F.pad(out, (width - out.shape[1], 0), value=value)


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


def check_sampling_args(prompts, max_new_tokens: int, temperature: float, top_p: float, group_size: int) -> list:
    """The checks every rollout engine makes on its arguments (one message each); returns ``list(prompts)``."""
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
    if group_size < 1:
        raise ValueError(f"group_size (samples per prompt) must be >= 1, got {group_size}")
    return prompts


def check_scoring_args(sequences: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> None:
    """The checks every teacher-forced scorer makes: matching shapes, and a response shorter than the rows."""
    if sequences.shape != attention_mask.shape:
        raise ValueError(f"sequences {tuple(sequences.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must have the same shape")
    L = sequences.shape[1]
    if not 0 < response_len < L:
        raise ValueError(f"response_len must be in [1, {L - 1}] for sequences of length {L}, got {response_len}")


def _make_generator(generator: torch.Generator | None, seed: int | None, device) -> torch.Generator:
    """The given generator, else a new one on ``device`` seeded with ``seed`` (a fresh seed when None)."""
    if generator is not None:
        return generator
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def _cut_responses(tokenizer, rows: list[list[int]], eos: list[int], stop, newline_before: list[bool],
                   stop_in_mask: bool) -> tuple[list[int], list[str], list[str]]:
    """Each sampled row's exact end on the real decode: the first EOS (kept in the mask), else the first stop
    pattern (cut from the text; its tokens in the mask only with ``stop_in_mask``), else its length.
    Returns (kept tokens, texts, finish reasons ``eos | stop | length``) per row."""
    keep_len, texts, reasons = [], [], []
    for row, toks in enumerate(rows):
        end, reason = len(toks), "length"
        for j, tk in enumerate(toks):
            if tk in eos:
                end, reason = j + 1, "eos"
                break
        body = toks[: end - 1] if reason == "eos" else toks
        text = tokenizer.decode(body, skip_special_tokens=True)
        cut = find_stop(text, stop, newline_before[row]) if stop else None
        if cut is not None:
            end = (_stop_end_tokens(tokenizer, body, text, stop, newline_before[row]) if stop_in_mask
                   else _kept_tokens(tokenizer, body, cut))
            text, reason = text[:cut], "stop"
        keep_len.append(end)
        texts.append(text)
        reasons.append(reason)
    return keep_len, texts, reasons


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
    group_size: int = 1,
    min_new_tokens: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    stop_in_mask: bool = False,
    n: int | None = None,
) -> Rollout:
    """Sample ``group_size`` responses per prompt (rows prompt-major) with a KV cache.

    * ``n``: the old name of ``group_size``, still accepted (code outside pfkit may pass it).

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
    * ``backend``: ``"auto"`` (the GPT-2 decoder for GPT-2, else ``"static"`` when the model supports it,
      else ``"hf"``), ``"gpt2"``, ``"static"`` (the model's forward over a pre-allocated ``StaticCache``) or
      ``"hf"`` (the model's forward with a ``DynamicCache``).

    Runs under ``torch.inference_mode`` with the model in eval mode (restored afterwards).
    """
    n = group_size if n is None else n
    prompts = check_sampling_args(prompts, max_new_tokens, temperature, top_p, n)
    if isinstance(stop, (str, re.Pattern)):
        stop = (stop,)
    stop = tuple(stop)
    if backend not in ("auto", "gpt2", "static", "hf"):
        raise ValueError(f"backend must be 'auto', 'gpt2', 'static' or 'hf', got {backend!r}")
    if backend == "gpt2" and not _GPT2Runner.supports(model):
        raise ValueError("backend='gpt2' needs a transformers GPT2LMHeadModel; use backend='auto' or 'hf'")
    if backend == "static" and not _StaticRunner.supports(model):
        raise ValueError("backend='static' needs a transformers causal LM with static-cache support; "
                         "use backend='auto' or 'hf'")

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
    ids = left_pad([torch.tensor(encoded[i]) for i in order], value=pad_id)
    pmask = left_pad([torch.ones(len(encoded[i]), dtype=torch.long) for i in order])
    ids, pmask = ids.to(device), pmask.to(device)

    generator = _make_generator(generator, seed, device)
    banned = torch.tensor(eos, device=device) if (eos and min_new_tokens > 0) else None

    with torch.inference_mode(), _eval_mode(model):
        use_fast = backend == "gpt2" or (backend == "auto" and _GPT2Runner.supports(model))
        use_static = not use_fast and (backend == "static" or (backend == "auto" and _StaticRunner.supports(model)))
        runner = _GPT2Runner(model) if use_fast else _StaticRunner(model) if use_static else _HFRunner(model)
        B = len(prompts) * n
        ids_u, pmask_u = ids, pmask
        if n > 1:
            ids, pmask = ids.repeat_interleave(n, 0), pmask.repeat_interleave(n, 0)
        prompt_lens = pmask.sum(-1)
        if n > 1 and (use_fast or use_static):  # prefill each distinct prompt once, then share its cache
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
    keep_len, texts, reasons = _cut_responses(tokenizer, [t[:g] for t, g in zip(resp.tolist(), gen_len.tolist())],
                                              eos, stop, newline_before, stop_in_mask)
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
        pad_id=pad_id,
    )


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
    check_scoring_args(sequences, attention_mask, response_len)
    kwargs = {}
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = response_len + 1
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                use_cache=False, **kwargs)
    logits = out.logits[:, -(response_len + 1):-1]
    return _token_logprobs(logits, sequences[:, -response_len:], attention_mask[:, -response_len:], return_entropy)


def _token_logprobs(logits, targets, mask, return_entropy):
    """``logit[target] - logsumexp`` (no full log-softmax tensor kept) and optionally the entropy, 0 where
    ``mask`` is 0."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    m = mask.to(logits.dtype)
    logp = (logits.gather(-1, targets[..., None]).squeeze(-1) - lse) * m
    if not return_entropy:
        return logp
    entropy = (lse - (logits.softmax(-1) * logits).sum(-1)) * m
    return logp, entropy


def shared_prefix_logprobs(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    prompt_index: torch.Tensor,
    *,
    return_entropy: bool = False,
):
    """:func:`sequence_logprobs` for rows that share prompts (``prompt_index[b]`` = which prompt row b answers),
    running each *distinct* prompt through the model once.

    A GRPO group is G responses to one prompt, so the prompt's keys/values are the same for all G: they are
    computed once per prompt (with gradient), gathered per row through the cache, and only the response
    tokens are run per row: about ``(P/G + T) / (P + T)`` of the compute for prompt length P. Same numbers
    as :func:`sequence_logprobs` (tested). Needs a model whose cache supports ``batch_select_indices``
    (any ``transformers`` causal LM with a ``DynamicCache``).
    """
    T = response_len
    P = sequences.shape[1] - T
    uniq, group = torch.unique(prompt_index, return_inverse=True)
    first = torch.full((len(uniq),), len(prompt_index), dtype=torch.long, device=group.device)
    first = first.scatter_reduce(0, group, torch.arange(len(group), device=group.device), reduce="amin")
    pmask = attention_mask[first, :P]
    start = int((pmask.sum(0) > 0).long().argmax())  # columns that are padding in every distinct prompt
    pids, pmask = sequences[first, start:P], pmask[:, start:]
    out = model(input_ids=pids, attention_mask=pmask, position_ids=_positions(pmask), use_cache=True,
                logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_select_indices(group)
    first_logits = out.logits[:, -1][group]                      # predicts response token 0
    rmask = attention_mask[:, P:]
    response_ids = sequences[:, P:]
    att = torch.cat([pmask[group], rmask], dim=1)
    pos = pmask.sum(-1)[group][:, None] + torch.arange(T, device=sequences.device)[None, :]
    res = model(input_ids=response_ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=T,
                **{cache_kwarg(model): cache})
    logits = torch.cat([first_logits[:, None], res.logits[:, : T - 1]], dim=1)
    return _token_logprobs(logits, response_ids, rmask, return_entropy)
