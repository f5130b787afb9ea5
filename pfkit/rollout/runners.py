"""Decoding runners for :func:`pfkit.rollout.generate`: the GPT-2 fast path and any causal LM.

The GPT-2 runner is a hand-rolled decode loop over the model's own weights (pre-allocated KV cache per
group of similar prompt lengths, single-query matmul attention, dropped finished rows); it is kept because
``benchmarks/rollout.py`` measures it faster than ``model.generate``. Any other causal LM runs through
:class:`HFRunner` (its own forward with a ``DynamicCache``; same results, less speed).
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
