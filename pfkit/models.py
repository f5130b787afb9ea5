"""Policies: any local causal LM checkpoint, plus the tiny embedded default (GPT-2 config, ~1 M params).

The embedded default and a real checkpoint go through the same code: ``load_policy(path)`` is
``AutoModelForCausalLM.from_pretrained`` + ``AutoTokenizer.from_pretrained`` on a local folder, with
``"embedded"`` meaning the folder shipped in ``data/policy``. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "data" / "policy"

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# The embedded default: a 4-layer GPT-2, width 128 (~1 M parameters with a 1k vocabulary): small enough
# to SFT in minutes on 2 CPU cores and to sample thousands of RL rollouts on CPU.
DEFAULT_CONFIG = dict(n_layer=4, n_embd=128, n_head=4, n_positions=384, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0)


class PolicyPathError(FileNotFoundError):
    """A policy path that does not hold a loadable checkpoint (printed as one line by the CLI)."""


def resolve_policy_path(path: str | os.PathLike = "embedded") -> Path:
    """``"embedded"`` -> data/policy; anything else -> that local folder (``~`` expanded)."""
    return EMBEDDED if str(path) == "embedded" else Path(path).expanduser()


def load_policy(path: str | os.PathLike = "embedded", *, dtype=None):
    """(model, tokenizer) from a local Hugging Face checkpoint folder; ``"embedded"`` = data/policy.

    Works for any ``AutoModelForCausalLM`` checkpoint with a fast tokenizer (GPT-2, Qwen, Llama, ...).
    The tokenizer gets a pad token (eos if it has none) and left padding, which batched sampling needs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_policy_path(path)
    how = ("pass a local folder written by `model.save_pretrained(...)` and `tokenizer.save_pretrained(...)`, "
           "or 'embedded' for the shipped default (regenerate it with `python scripts/make_default_policy.py`)")
    if not folder.exists():
        raise PolicyPathError(f"policy path {str(folder)!r} does not exist; {how}")
    if not folder.is_dir():
        raise PolicyPathError(f"policy path {str(folder)!r} is a file, not a checkpoint folder; {how}")
    if not (folder / "config.json").is_file():
        raise PolicyPathError(f"policy path {str(folder)!r} has no config.json, so it is not a Hugging Face "
                              f"checkpoint; {how}")
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    if not weights:
        raise PolicyPathError(f"policy path {str(folder)!r} has a config.json but no weights "
                              f"(*.safetensors or *.bin); {how}")
    tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / f).is_file() for f in tok_files):
        raise PolicyPathError(f"policy path {str(folder)!r} has weights but no tokenizer files "
                              f"({', '.join(tok_files)}); save it with `tokenizer.save_pretrained(...)` there too")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure here means the folder lacks a usable tokenizer
        raise PolicyPathError(f"policy path {str(folder)!r} has no loadable tokenizer "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {how}") from e
    try:
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001
        raise PolicyPathError(f"policy path {str(folder)!r} could not be loaded as a causal LM "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {how}") from e
    _prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _prepare_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts`` (the task corpus), as a ``PreTrainedTokenizerFast``.

    Byte-level BPE so every string (indentation, quotes, unseen characters) round-trips exactly; no
    prefix space and no clean-up of spaces on decode, since completions are glued onto prompts verbatim.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None, clean_up_tokenization_spaces=False)
    fast.padding_side = "left"
    return fast


def build_policy(tokenizer, **config_overrides):
    """A randomly initialised GPT-2 sized for ``tokenizer`` (defaults: ``DEFAULT_CONFIG``, ~1 M params)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = {**DEFAULT_CONFIG, **config_overrides}
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id or tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **cfg)
    return GPT2LMHeadModel(config)


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
