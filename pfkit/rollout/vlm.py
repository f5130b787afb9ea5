"""Rollouts and log-probs for vision-language policies (``AutoModelForImageTextToText`` + ``AutoProcessor``).

The text path (:mod:`pfkit.rollout.core`) is unchanged; this module adds the image inputs around the same
conventions, so a VLM rollout is a :class:`Rollout` (:class:`VLMRollout`, one more field) that GRPO trains
on exactly as it does on text:

* Each prompt is run through the model's own processor on its own (text + image -> ``input_ids`` with the
  image placeholder expanded, ``pixel_values`` and, for Qwen2-VL-family models, ``image_grid_thw``), then
  the ids are left-padded into a batch. The processor outputs of row ``b`` travel with the row in
  ``VLMRollout.pixel_inputs[b]`` (the G rows of a group share one dict), so selecting, concatenating and
  sharding rows keeps every row's image with it.
* Prefill passes the rows' pixel inputs (concatenated along dim 0 in row order, as the processor does for
  a batch); decoding runs on the KV cache with no pixel inputs. Each distinct prompt is prefilled once and
  its cache repeated ``group_size`` times.
* Positions: Qwen2-VL-family models (a ``get_rope_index`` on the inner model) use 3-D multimodal RoPE; the
  prefill and the teacher-forced pass both take them from ``get_rope_index`` over the left-padded batch, and
  a decoding step at response position ``t`` uses ``prompt_len + t + rope_delta`` (what ``get_rope_index``
  assigns to that text token in the full sequence). Other models (LLaVA family) use
  ``cumsum(attention_mask) - 1`` as the text path does.
* The image/video placeholder tokens are excluded from the policy's distribution (:func:`placeholder_ids`):
  never sampled, and scored the same way, so a response never holds one.
* ``logprobs`` are the raw (temperature-1) log-probs, and :func:`sequence_logprobs` scores the same rows in
  one teacher-forced pass with the same pixel inputs: equal to the rollout's within 1e-4 (tests/test_vlm.py).

Same approach as TRL's GRPOTrainer and verl/EasyR1: the processor's ``pixel_values`` / ``image_grid_thw``
are kept per sample and passed again to every log-prob pass (old, reference, policy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pfkit.rollout.core import (
    Rollout,
    _cut_responses,
    _eos_ids,
    _eval_mode,
    _make_generator,
    _positions,
    _sample,
    _token_logprobs,
    check_sampling_args,
    check_scoring_args,
    left_pad,
)
from pfkit.rollout.runners import cache_kwarg
from pfkit.rollout.stops import find_stop

__all__ = ["VLMRollout", "chunk_sampler", "encode_prompts", "generate", "load_image", "sample_and_check",
           "sequence_logprobs"]

# processor outputs that are token-level (rebuilt from the padded batch), not image inputs
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class VLMRollout(Rollout):
    """A :class:`Rollout` whose rows carry their image inputs: ``pixel_inputs[b]`` is the processor's
    image tensors for row b's prompt (``{"pixel_values": ..., "image_grid_thw": ...}``; None for a
    text-only prompt). ``select`` / ``groups`` / ``cat`` / ``to`` keep them with their rows."""

    pixel_inputs: list = field(default_factory=list)

    @classmethod
    def _wrap(cls, base: Rollout, pixel_inputs: list) -> VLMRollout:
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Rollout)}, pixel_inputs=pixel_inputs)

    def select(self, rows, *, trim: bool = True) -> VLMRollout:
        base = Rollout.select(self, rows, trim=trim)
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        return self._wrap(base, [self.pixel_inputs[i] for i in rows.tolist()])

    def to(self, device) -> VLMRollout:
        moved = [None if p is None else {k: v.to(device) for k, v in p.items()} for p in self.pixel_inputs]
        return self._wrap(Rollout.to(self, device), moved)

    def logprobs_under(self, model, rows=None, *, shared_prefix: bool = False, return_entropy: bool = False):
        """:meth:`Rollout.logprobs_under` with each row's image: :func:`sequence_logprobs` of rows ``rows``
        (all by default), one full pass per row. ``shared_prefix`` does not apply: a prompt's image tokens
        are part of its prefix, so the rows keep their own pass."""
        rows = torch.arange(len(self)) if rows is None else torch.as_tensor(rows)
        pix = self.pixel_inputs or [None] * len(self)
        return sequence_logprobs(model, self.sequences[rows], self.attention_mask[rows], self.response_len,
                                 [pix[i] for i in rows.tolist()], return_entropy=return_entropy)

    @staticmethod
    def cat(parts: Sequence[Rollout]) -> VLMRollout:
        parts = list(parts)
        pix = [p for r in parts for p in (getattr(r, "pixel_inputs", None) or [None] * len(r))]
        return VLMRollout._wrap(Rollout.cat(parts), pix)


def load_image(image):
    """A PIL RGB image from a path, a PIL image or an ``[H, W, 3]`` uint8 array (None stays None)."""
    from PIL import Image

    if image is None:
        return None
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    import numpy as np

    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def image_prefix(processor) -> str:
    """The text that stands for one image in a prompt: the processor's image token, wrapped in the
    vision start/end tokens where the tokenizer has them (Qwen2-VL family)."""
    tok = getattr(processor, "tokenizer", processor)
    token = getattr(processor, "image_token", None) or "<image>"
    vocab = tok.get_vocab()
    if "<|vision_start|>" in vocab and "<|vision_end|>" in vocab:
        return f"<|vision_start|>{token}<|vision_end|>"
    return token


def encode_prompts(processor, prompts: Sequence[str], images: Sequence | None, *, chat_template: bool = False
                   ) -> tuple[list[list[int]], list[dict | None]]:
    """Per prompt: its token ids (image placeholder expanded by the processor) and its image tensors.

    A prompt with an image that does not contain the processor's image token gets :func:`image_prefix`
    in front. ``chat_template=True`` wraps each prompt as one user turn with the processor's chat
    template (instruction-tuned checkpoints such as Qwen2.5-VL-Instruct), generation prompt added.
    """
    images = list(images) if images is not None else [None] * len(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images; pass one image (or None) per prompt")
    token = getattr(processor, "image_token", None) or "<image>"
    ids, pix = [], []
    for text, image in zip(prompts, images):
        image = load_image(image)
        if chat_template:
            content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
            text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
        elif image is not None and token not in text:
            text = image_prefix(processor) + text
        if image is None:
            out = processor.tokenizer([text], return_tensors="pt")
        else:
            out = processor(text=[text], images=[image], return_tensors="pt")
        ids.append(out["input_ids"][0].tolist())
        extra = {k: v for k, v in out.items() if k not in _TOKEN_KEYS and isinstance(v, torch.Tensor)}
        pix.append(extra or None)
    return ids, pix


def _batch_pixels(rows: Sequence[dict | None], device=None) -> dict:
    """The image inputs of a batch: each key's tensors concatenated along dim 0 in row order (the order
    the model consumes images in: placeholders are filled row by row)."""
    present = [p for p in rows if p is not None]
    if not present:
        return {}
    return {k: torch.cat([p[k] for p in present]).to(device) for k in present[0]}


def _mrope(model):
    """The inner model's ``get_rope_index`` (Qwen2-VL family, 3-D RoPE), else None."""
    inner = getattr(model, "model", None)
    return getattr(inner, "get_rope_index", None)


def _token_types(model, ids: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    types = torch.zeros_like(ids, dtype=torch.int)
    for value, name in ((1, "image_token_id"), (2, "video_token_id")):
        tid = getattr(cfg, name, None)
        if tid is not None:
            types = types.masked_fill(ids == tid, value)
    return types


def positions(model, ids: torch.Tensor, mask: torch.Tensor, pixels: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids, delta [B, 1]): 3-D RoPE positions ``[3, B, L]`` from the model's ``get_rope_index``
    for the Qwen2-VL family, else ``cumsum(mask) - 1`` ``[B, L]`` with delta 0. A text token at real
    index i after the prompt's image gets position ``i + delta``."""
    rope = _mrope(model)
    if rope is None:
        return _positions(mask), torch.zeros(ids.shape[0], 1, dtype=torch.long, device=ids.device)
    kw = {k: pixels[k] for k in ("image_grid_thw", "video_grid_thw") if k in pixels}
    pos, delta = rope(ids, mm_token_type_ids=_token_types(model, ids), attention_mask=mask, **kw)
    return pos, delta.to(ids.device).long().view(-1, 1)


def _step_positions(model, real_pos: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    pos = (real_pos.view(-1, 1) + delta.view(-1, 1)).long()
    return pos[None].expand(3, -1, -1) if _mrope(model) is not None else pos


def placeholder_ids(model) -> list[int]:
    """Token ids that stand for image/video inputs (``image_token_id`` / ``image_token_index`` /
    ``video_token_id``): the processor puts them in prompts; a response never holds one. A policy that
    sampled one (a tiny policy at temperature 1 did: 897 image tokens for 896 image features) would make
    the next teacher-forced pass fail, so generation and scoring both exclude them."""
    cfg = model.config
    ids = {getattr(cfg, k, None) for k in ("image_token_id", "image_token_index", "video_token_id")}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


_BANNED = -1e9  # not -inf: the entropy sums softmax * logits, and 0 * -inf is NaN


def _ban(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    if not ids:
        return logits
    logits = logits.clone()
    logits[..., ids] = _BANNED
    return logits


def _n_positions(model) -> int | None:
    cfg = getattr(model.config, "text_config", model.config)
    return getattr(cfg, "max_position_embeddings", None)


def generate(model, processor, prompts: Sequence[str], images: Sequence | None = None, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, stop: Sequence = (), seed: int | None = None,
             generator: torch.Generator | None = None, group_size: int = 1, eos_token_id=None,
             min_new_tokens: int = 0, stop_in_mask: bool = False, chat_template: bool = False) -> VLMRollout:
    """``group_size`` sampled responses per (prompt, image): :func:`pfkit.rollout.generate` for a VLM.

    ``images[i]``: a path, PIL image, ``[H, W, 3]`` array or None (text only). Sampling, stop strings,
    EOS handling, determinism (one ``torch.Generator``) and the returned fields are those of the text
    :func:`~pfkit.rollout.generate`; the rollout also carries each row's image inputs.
    """
    prompts = check_sampling_args(prompts, max_new_tokens, temperature, top_p, group_size)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    encoded, pix = encode_prompts(processor, prompts, images, chat_template=chat_template)
    P = max(len(e) for e in encoded)
    n_pos = _n_positions(model)
    if n_pos is not None and P + max_new_tokens > n_pos:
        raise ValueError(f"longest prompt ({P} tokens, image included) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's {n_pos} positions; shorten the prompts or lower max_new_tokens")
    ids = left_pad([torch.tensor(e) for e in encoded], value=pad_id).to(device)
    pmask = left_pad([torch.ones(len(e), dtype=torch.long) for e in encoded]).to(device)
    generator = _make_generator(generator, seed, device)
    banned = torch.tensor(eos, device=device) if (eos and min_new_tokens > 0) else None
    n = group_size
    B = len(prompts) * n
    cache_kw = cache_kwarg(model)

    with torch.inference_mode(), _eval_mode(model):
        pixels = _batch_pixels(pix, device)
        pos, delta = positions(model, ids, pmask, pixels)
        out = model(input_ids=ids, attention_mask=pmask, position_ids=pos, use_cache=True, logits_to_keep=1, **pixels)
        cache = getattr(out, "cache", None) or out.past_key_values
        placeholders = placeholder_ids(model)
        logits = _ban(out.logits[:, -1], placeholders)
        if n > 1:  # each distinct prompt was prefilled once; its samples share the cache
            cache.batch_repeat_interleave(n)
            logits, delta = logits.repeat_interleave(n, 0), delta.repeat_interleave(n, 0)
        mask = pmask.repeat_interleave(n, 0)
        prompt_lens = mask.sum(-1)
        resp = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
        raw_lp = torch.zeros((B, max_new_tokens), device=device)
        samp_lp = torch.zeros((B, max_new_tokens), device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        eos_t = torch.tensor(eos, device=device) if eos else None
        steps, state = 0, {}
        for t in range(max_new_tokens):
            tok, lp, slp = _sample(logits, temperature, top_p, generator, banned if t < min_new_tokens else None,
                                   state=state)
            resp[:, t], raw_lp[:, t], samp_lp[:, t] = tok, lp, slp
            steps = t + 1
            if eos_t is not None:
                done |= torch.isin(tok, eos_t)
            if stop:
                for b in (~done).nonzero().flatten().tolist():
                    text = tokenizer.decode(resp[b, :t + 1].tolist(), skip_special_tokens=True)
                    if find_stop(text, stop, prompts[b // n].endswith("\n")) is not None:
                        done[b] = True
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
            step_pos = _step_positions(model, prompt_lens + t, delta)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=step_pos, use_cache=True,
                        **{cache_kw: cache})
            cache = getattr(out, "cache", None) or out.past_key_values
            logits = _ban(out.logits[:, -1], placeholders)

    ids, pmask = ids.repeat_interleave(n, 0), pmask.repeat_interleave(n, 0)
    resp, raw_lp, samp_lp = resp[:, :steps].clone(), raw_lp[:, :steps].clone(), samp_lp[:, :steps].clone()
    keep_len, texts, reasons = _cut_responses(tokenizer, resp.tolist(), eos, stop,
                                              [prompts[row // n].endswith("\n") for row in range(B)], stop_in_mask)
    T = max(1, max(keep_len))
    lens = torch.tensor(keep_len, device=device)
    rmask = (torch.arange(T, device=device)[None, :] < lens[:, None]).long()
    if resp.shape[1] < T:
        resp, raw_lp, samp_lp = (F.pad(x, (0, T - x.shape[1])) for x in (resp, raw_lp, samp_lp))
    resp = resp[:, :T].masked_fill(rmask == 0, pad_id)
    return VLMRollout(sequences=torch.cat([ids, resp], dim=1), attention_mask=torch.cat([pmask, rmask], dim=1),
                      prompt_len=P, response_ids=resp, response_mask=rmask, logprobs=raw_lp[:, :T] * rmask,
                      texts=texts, sample_logprobs=samp_lp[:, :T] * rmask, finish_reasons=reasons,
                      prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(n), pad_id=pad_id,
                      pixel_inputs=[pix[b // n] for b in range(B)])


def sequence_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                      pixel_inputs: Sequence[dict | None] | None = None, *, return_entropy: bool = False):
    """Log-probs ``[B, response_len]`` of the last ``response_len`` tokens under a VLM, the rows' image
    inputs passed as in :func:`generate`: :func:`pfkit.rollout.sequence_logprobs` for images. Gradients
    flow; masked positions get 0; with ``return_entropy`` also the per-token entropy."""
    check_scoring_args(sequences, attention_mask, response_len)
    pixels = _batch_pixels(pixel_inputs or [], sequences.device)
    pos, _ = positions(model, sequences, attention_mask, pixels)
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=pos, use_cache=False,
                logits_to_keep=response_len + 1, **pixels)
    logits = _ban(out.logits[:, -(response_len + 1):-1], placeholder_ids(model))  # as generate samples them
    return _token_logprobs(logits, sequences[:, -response_len:], attention_mask[:, -response_len:], return_entropy)


@torch.no_grad()
def sample_and_check(policy, processor, problems: Sequence, group_size: int, *, prompts: Sequence[str],
                     images: Sequence | None, check: Callable[[list, list[str]], Sequence],
                     max_new_tokens: int = 32, stop: Sequence = (), chat_template: bool = False, **kw):
    """:func:`pfkit.rollout.sample_and_check` for a VLM: ``group_size`` responses per (prompt, image),
    each scored by ``check(flat_problems, texts)``; the same table and, with ``return_rollout``, a
    :class:`VLMRollout`. ``kw``: that function's sampling/chunking arguments."""
    from pfkit.rollout.check import sample_and_check as sample_chunks

    return sample_chunks(policy, processor.tokenizer, problems, group_size, prompts=prompts, check=check,
                         max_new_tokens=max_new_tokens, stop=stop, sample=chunk_sampler(
                             policy, processor, images, len(problems), chat_template=chat_template), **kw)


def chunk_sampler(model, processor, images: Sequence | None, n_prompts: int, *, chat_template: bool = False):
    """The ``sample=`` hook of :func:`pfkit.rollout.sample_and_check` for a VLM: the chunk of prompts that
    starts at index ``start`` is sampled with its own images (``images[i]`` goes with prompt i)."""
    images = list(images) if images is not None else [None] * n_prompts

    def sample(texts, start, **kw):
        return generate(model, processor, texts, images[start:start + len(texts)], chat_template=chat_template, **kw)

    return sample
