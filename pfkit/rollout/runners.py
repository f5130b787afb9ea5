"""Decoding runners for :func:`pfkit.rollout.generate`: the GPT-2 fast path and any causal LM.

The GPT-2 runner is a hand-rolled decode loop over the model's own weights (pre-allocated KV cache per
group of similar prompt lengths, single-query matmul attention, dropped finished rows); it is kept because
``benchmarks/rollout.py`` measures it faster than ``model.generate``. Other ``transformers`` causal LMs run
:class:`_StaticRunner` (their own modules, a ``StaticCache``, pfkit's single-query attention kernel); anything
else :class:`_HFRunner` (its own forward with a ``DynamicCache``; same results, less speed).
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _HFRunner:
    """Any causal LM: its own forward with a DynamicCache (positions/masks passed explicitly)."""

    def __init__(self, model):
        self.model = model
        self.cache_kw = cache_kwarg(model)

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


_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


def _gelu_tanh_sigmoid(x):
    """GELU (tanh approximation) as ``x * sigmoid(2k(x + 0.044715 x^3))``: the same function
    (``(1 + tanh z) / 2 = sigmoid(2z)``, equal to 5e-7), in place after one allocation; the built-in
    tanh-GELU kernel was measured 2x slower on this CPU."""
    y = x * x
    return y.mul_(0.044715 * _GELU_K).add_(_GELU_K).mul_(x).sigmoid_().mul_(x)


class _GPT2Runner:
    """GPT-2 forward written out over the model's weights, with a pre-allocated KV cache.

    Mirrors ``GPT2LMHeadModel`` in eval mode (no dropout): pre-LN blocks, Conv1D projections
    (``x @ W + b``), scaled dot-product attention, tied LM head.
    """

    SIGMOID_GELU = True  # kept: measured faster (the A/B in benchmarks/rollout.py --ab)
    GROUPS = 4  # KV-cache groups of similar prompt length; 2 and 8 measured no faster

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
            self.act = _gelu_tanh_sigmoid if self.SIGMOID_GELU else (lambda x: F.gelu(x, approximate="tanh"))
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
        size = max(8, -(-b // self.GROUPS))
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


class _StaticRunner:
    """Any ``transformers`` causal LM that supports a static cache (Llama, Qwen2, Mistral, Gemma, ...): the
    model's own forward over a pre-allocated :class:`transformers.StaticCache` sized ``prompt + max_new``.

    Compared with :class:`_HFRunner` (a ``DynamicCache`` that concatenates every layer's keys/values at every
    step) the cache is written in place, and the attention mask is built once as a 4-D boolean tensor that
    the model takes as-is (SDPA), so no per-step mask construction and no ``generate`` machinery (logits
    processors, stopping criteria, ``prepare_inputs_for_generation``) runs per step. The prefill runs in
    groups of similar prompt length, each over its own columns (``benchmarks/rollout.py``: 1.05x -> 1.22x HF
    ``generate`` in CPU time on tiny Llama, 1.10x -> 1.22x on Qwen2).
    """

    @staticmethod
    def supports(model) -> bool:
        from transformers import PreTrainedModel

        return (isinstance(model, PreTrainedModel) and bool(getattr(model, "_can_compile_fullgraph", False))
                and not getattr(model.config, "is_encoder_decoder", False)
                and not getattr(model.config, "sub_configs", None)  # text-only LMs (no vision/audio towers)
                and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager"))

    def __init__(self, model):
        self.model = model
        self.cache_kw = cache_kwarg(model)
        cfg = model.config
        self.bool_mask = getattr(cfg, "_attn_implementation", None) == "sdpa"
        # decoding steps use pfkit's single-query kernel (below) when the model's attention is plain softmax
        # attention: no sliding window, no logit soft-capping, no attention sinks
        self.own_kernel = self.bool_mask and self.DECODE_KERNEL and not any(
            getattr(cfg, k, None) for k in ("use_sliding_window", "attn_logit_softcapping", "sliding_window_pattern",
                                             "layer_types_sliding", "sinks")) and not (
            getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))

    DECODE_KERNEL = True  # kept: measured faster than the model's SDPA for one query (benchmarks/rollout.py)
    #: prefill in this many groups of consecutive rows (generate sorts rows by prompt length), each over its own
    #: longest prompt's columns only, so the prompt forward skips most left padding; at least GROUP_MIN rows each
    GROUPS, GROUP_MIN = 4, 8

    def prefill(self, ids, mask, pos, max_new):
        from transformers import StaticCache

        b, P = ids.shape
        self.P, self.t, self.max_len = P, 0, P + max_new
        self.keys = torch.zeros(b, self.max_len, dtype=torch.bool, device=ids.device)
        self.keys[:, :P] = mask.bool()
        lens = mask.sum(-1).tolist()
        size = max(self.GROUP_MIN, -(-b // self.GROUPS)) if self.bool_mask else b
        caches, logits = [], []
        for a in range(0, b, size):
            z = min(b, a + size)
            s = P - max(lens[a:z])  # columns [0, s) are padding in every row of the group
            cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
            for layer in cache.layers:  # a static layer writes at its own counter (it ignores cache_position)
                layer.cumulative_length.fill_(s)
            if len(lens) <= size:  # one group: the model builds its own mask
                att = mask[a:z]
            else:  # [n, 1, P - s, max_len] boolean (SDPA takes it as-is): causal over real keys; a padding
                # query that sees no key sees itself, so no row of the softmax is empty (no NaN in the cache)
                q = torch.arange(s, P, device=ids.device)
                kv = torch.arange(self.max_len, device=ids.device)
                att = (kv[None, :] <= q[:, None])[None] & self.keys[a:z, None, :]
                att |= (kv[None, :] == q[:, None])[None] & ~att.any(-1, keepdim=True)
                att = att[:, None]
            out = self.model(input_ids=ids[a:z, s:], attention_mask=att, position_ids=pos[a:z, s:],
                             use_cache=True, logits_to_keep=1, cache_position=torch.arange(s, P, device=ids.device),
                             **{self.cache_kw: cache})
            caches.append(cache)
            logits.append(out.logits[:, -1])
        self.cache = caches[0]
        if len(caches) > 1:  # one batch-wide cache (the unwritten padding slots hold zeros, masked out)
            for i, layer in enumerate(self.cache.layers):
                if getattr(layer, "is_initialized", False):
                    layer.keys = torch.cat([c.layers[i].keys for c in caches])
                    layer.values = torch.cat([c.layers[i].values for c in caches])
                    layer.batch_size = b
        return torch.cat(logits)

    def _mask(self):
        if self.bool_mask:  # [b, 1, 1, max_len]: the model's SDPA attention takes a 4-D boolean mask as-is
            return self.keys[:, None, None, :]
        return self.keys[:, : self.P + self.t + 1].long()

    def step(self, tokens, pos):
        c = self.P + self.t
        self.keys[:, c] = True
        cfg = self.model.config
        mask = self._mask()
        if self.own_kernel:  # attend over the filled c + 1 cache slots only, not the whole static cache
            mask, impl = mask[..., : c + 1], cfg._attn_implementation
            cfg._attn_implementation = _register_decode_kernel()
        try:
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                             cache_position=torch.tensor([c], device=tokens.device), use_cache=True,
                             **{self.cache_kw: self.cache})
        finally:
            if self.own_kernel:
                cfg._attn_implementation = impl
        self.t += 1
        return out.logits[:, -1]

    def _rows(self, pick):
        # StaticLayer has no batch_select_indices / batch_repeat_interleave of its own (transformers 5.24)
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys, layer.values = pick(layer.keys), pick(layer.values)
                layer.batch_size = layer.keys.shape[0]
        self.keys = pick(self.keys)
        return True

    def select(self, rows):
        return self._rows(lambda t: t[rows])

    def expand(self, repeats):
        return self._rows(lambda t: t.repeat_interleave(repeats, 0))


def _decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One query per row over the first ``n`` cache slots (``n`` = the boolean mask's width): matmul, masked
    softmax, matmul. Grouped-query heads are handled by viewing the query heads as ``[kv_heads, group]``
    (query head h reads kv head h // group, as ``repeat_kv``), so keys/values are never repeated."""
    b, H, q, dh = query.shape
    n = attention_mask.shape[-1]
    kv = key.shape[1]
    qq = query.reshape(b, kv, (H // kv) * q, dh)
    s = torch.matmul(qq, key[:, :, :n].transpose(-1, -2)).mul_(dh ** -0.5 if scaling is None else scaling)
    s.masked_fill_(~attention_mask.reshape(b, 1, 1, n), float("-inf"))
    out = torch.matmul(s.softmax(-1), value[:, :, :n]).reshape(b, H, q, value.shape[-1])
    return out.transpose(1, 2), None


_KERNEL_NAME = "pfkit_decode"


def _register_decode_kernel() -> str:
    from transformers import AttentionInterface

    if _KERNEL_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(_KERNEL_NAME, _decode_attention)
    return _KERNEL_NAME
