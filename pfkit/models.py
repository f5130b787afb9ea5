"""Policies: any local causal LM checkpoint, plus the tiny embedded default (GPT-2 config, ~1 M params).

The embedded default and a real checkpoint go through the same code: ``load_policy(path)`` is
``AutoModelForCausalLM.from_pretrained`` + ``AutoTokenizer.from_pretrained`` on a local folder, with
``"embedded"`` meaning the folder shipped in ``pfkit/assets/policy``. Nothing is downloaded (``local_files_only``).

Reward models and PF-PPO's critic are :class:`ScalarHeadModel` (the policy's body + a scalar head), loaded
with ``ScalarHeadModel.load(path)`` (``"embedded"`` = pfkit/assets/reward); :func:`encode` turns (prompt, response)
texts into their left-padded ids. Their training lives in ``pfkit.modules.reward``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

# the shipped checkpoints are package data (pfkit/assets/, built by scripts/ - see data/README.md), so a
# wheel install has them too
ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED = ASSETS / "policy"

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# The embedded default: a 4-layer GPT-2, width 128 (~1 M parameters with a 1k vocabulary): small enough
# to SFT in minutes on 2 CPU cores and to sample thousands of RL rollouts on CPU.
DEFAULT_CONFIG = dict(n_layer=4, n_embd=128, n_head=4, n_positions=384, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0)


class PolicyPathError(FileNotFoundError):
    """A policy path that does not hold a loadable checkpoint (printed as one line by the CLI)."""


def resolve_policy_path(path: str | os.PathLike = "embedded") -> Path:
    """``"embedded"`` -> pfkit/assets/policy; anything else -> that local folder (``~`` expanded)."""
    return EMBEDDED if str(path) == "embedded" else Path(path).expanduser()


def load_policy(path: str | os.PathLike = "embedded", *, dtype=None):
    """(model, tokenizer) from a local Hugging Face checkpoint folder; ``"embedded"`` = pfkit/assets/policy.

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


# ------------------------------------------------------------------------------- vision-language policies

EMBEDDED_VLM = ASSETS / "vlm"
IMAGE_TOKEN = "<image>"


def resolve_vlm_path(path: str | os.PathLike) -> Path:
    """``"embedded_vlm"`` -> pfkit/assets/vlm; anything else -> that local folder."""
    return EMBEDDED_VLM if str(path) == "embedded_vlm" else Path(path).expanduser()


def is_vision_language(path: str | os.PathLike) -> bool:
    """Whether a local checkpoint is an image-text-to-text model (its ``config.json`` model type is in
    ``transformers``' ``AutoModelForImageTextToText`` mapping); ``"embedded_vlm"`` is."""
    if str(path) == "embedded_vlm":
        return True
    cfg = Path(path).expanduser() / "config.json"
    if not cfg.is_file():
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return json.loads(cfg.read_text()).get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def load_vlm(path: str | os.PathLike = "embedded_vlm", *, dtype=None):
    """(model, processor) from a local image-text-to-text checkpoint (``AutoModelForImageTextToText`` +
    ``AutoProcessor``, nothing downloaded); ``"embedded_vlm"`` = pfkit/assets/vlm. The processor's tokenizer
    gets a pad token and left padding, as :func:`load_policy` does for text."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = resolve_vlm_path(path)
    how = ("pass a local folder written by `model.save_pretrained(...)` and `processor.save_pretrained(...)`, "
           "or 'embedded_vlm' for the shipped one (rebuild it with `python scripts/train_vlm.py`)")
    if not (folder / "config.json").is_file():
        raise PolicyPathError(f"vision-language policy path {str(folder)!r} has no config.json; {how}")
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 -- any failure here means the folder is not a loadable VLM
        raise PolicyPathError(f"vision-language policy path {str(folder)!r} could not be loaded "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {how}") from e
    _prepare_tokenizer(processor.tokenizer)
    model.eval()
    return model, processor


def build_vlm(tokenizer, *, image_size: int = 32, patch_size: int = 8, vision_width: int = 32, vision_layers: int = 2,
              width: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 256):
    """A randomly initialised tiny LLaVA (CLIP vision tower + Llama language model) and its processor.

    LLaVA because its processor is a CLIP image processor + the tokenizer, both of which build offline
    without extra packages (Qwen2-VL's processor needs torchvision for its video processor). ``tokenizer``
    gets the ``<image>`` token; an image becomes ``(image_size / patch_size)^2`` tokens.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size},
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=0)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=vision_layers,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                              projection_dim=vision_width)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=(image_size // patch_size) ** 2, tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


# ------------------------------------------------------------------------------- reward models / critics


def encode(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int = 384,
           add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``/``attention_mask`` of prompt + response (+ EOS), truncated from the left;
    ``response_mask`` marks the response tokens and the EOS (what a likelihood term sums over)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    seqs = [(p + r + eos)[-max_length:] for p, r in zip(p_ids, r_ids)]
    n_resp = [min(len(r) + len(eos), len(s)) for r, s in zip(r_ids, seqs)]
    from pfkit.rollout import left_pad

    L = max((len(s) for s in seqs), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if not seqs:
        empty = torch.zeros((0, L), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "response_mask": empty}
    ones = [torch.ones(n, dtype=torch.long) for n in (len(s) for s in seqs)]
    return {"input_ids": left_pad([torch.tensor(s, dtype=torch.long) for s in seqs], L, value=pad),
            "attention_mask": left_pad(ones, L),
            "response_mask": left_pad([torch.ones(n, dtype=torch.long) for n in n_resp], L)}


EMBEDDED_RM = ASSETS / "reward"


def policy_fingerprint(model) -> str:
    """A short hash of a model's weights, to check that a saved reward model belongs to a policy."""
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


class ScalarHeadModel(nn.Module):
    """A transformer body (the policy's ``base_model``) with a linear head giving one scalar per position.

    Optional **likelihood term** (``lm_head`` given): the reward becomes
    ``head(h_last) + w * sum_t log p(y_t | x, y_<t)`` over the response tokens, with the log-probabilities
    from the body's own LM head and a learned scalar ``w`` (initialised to 1). Bradley-Terry training then
    also sharpens the response likelihood, as DPO's implicit reward does. Why: a linear head on the last
    token of a ~1 M-parameter body does not learn to compare the docstring's constants with the code's
    from a few thousand pairs (measured: held-out pair accuracy 0.46-0.54 with 2.7k-5.7k pairs), while the
    SFT policy's own likelihood already ranks 62% of held-out pairs correctly. Real-scale reward models
    do not need it (``likelihood_term=False``, the plain value-head RM).
    """

    def __init__(self, backbone: nn.Module, meta: dict | None = None, lm_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.meta = dict(meta or {})
        self.lm_head = lm_head
        if lm_head is not None:
            if getattr(backbone.config, "tie_word_embeddings", False):
                lm_head.weight = backbone.get_input_embeddings().weight
            self.likelihood_weight = nn.Parameter(torch.ones(()))
            self.meta["likelihood_term"] = True

    @property
    def config(self):
        return self.backbone.config

    @property
    def has_likelihood_term(self) -> bool:
        return self.lm_head is not None

    @classmethod
    def from_policy(cls, policy: nn.Module, likelihood_term: bool = False) -> ScalarHeadModel:
        """Copy the policy's body (and, with ``likelihood_term``, its LM head) and add a fresh scalar head."""
        lm_head = copy.deepcopy(policy.get_output_embeddings()) if likelihood_term else None
        m = cls(copy.deepcopy(policy.base_model), meta={"policy_fingerprint": policy_fingerprint(policy)},
                lm_head=lm_head)
        return m.to(next(policy.parameters()).dtype).train()

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw scalar ``[B, L]`` at every position (positions from the mask, so left padding is harmless)."""
        return self.head(self._hidden(input_ids, attention_mask)).squeeze(-1).float()

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw reward ``[B]``: the scalar at each row's last attended token (+ the likelihood term, which
        needs ``response_mask``: 1 on the response tokens, as :func:`encode` gives)."""
        h = self._hidden(input_ids, attention_mask)
        L = attention_mask.shape[1]
        last = (attention_mask.long() * torch.arange(L, device=attention_mask.device)).argmax(-1)
        h_last = h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)
        reward = self.head(h_last).squeeze(-1).float()
        if self.lm_head is not None:
            if response_mask is None:
                raise ValueError("this reward model has a likelihood term: pass response_mask (1 on response "
                                 "tokens), e.g. from pfkit.models.encode, or use score_texts")
            logp = torch.log_softmax(self.lm_head(h[:, :-1]).float(), -1)
            logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            reward = reward + self.likelihood_weight.float() * (logp * response_mask[:, 1:].float()).sum(-1)
        return reward

    def normalize(self, raw: torch.Tensor, clip: float | None = 10.0) -> torch.Tensor:
        r = (raw - self.reward_mean) / self.reward_std
        return r.clamp(-clip, clip) if clip is not None else r

    @torch.no_grad()
    def score_texts(self, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, normalize: bool = True,
                    batch_size: int = 64, max_length: int = 384) -> torch.Tensor:
        """Rewards ``[B]`` of (prompt, response) texts, in eval mode, normalised unless ``normalize=False``."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        try:
            for i in range(0, len(prompts), batch_size):
                enc = encode(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], max_length)
                out.append(self.score(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      enc["response_mask"].to(device)).cpu())
        finally:
            self.train(was)
        raw = torch.cat(out) if out else torch.zeros(0)
        return self.normalize(raw) if normalize else raw

    def as_critic(self) -> ScalarHeadModel:
        """A trainable copy whose head outputs *normalised* rewards (mean/std folded into the head), so the
        critic's initial value at the last token is the normalised reward it will be trained against.
        A likelihood term is not a per-position value, so the critic keeps only the body and head: its
        initial values then track the head's part of the reward, not the whole of it."""
        critic = copy.deepcopy(self)
        if critic.lm_head is not None:
            critic.lm_head = None
            del critic.likelihood_weight
            critic.meta.pop("likelihood_term", None)
        with torch.no_grad():
            critic.head.weight /= self.reward_std
            critic.head.bias.copy_((self.head.bias - self.reward_mean) / self.reward_std)
            critic.reward_mean.zero_()
            critic.reward_std.fill_(1.0)
        return critic

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, tokenizer=None, *, policy: str | None = None,
             recipe: dict | None = None) -> Path:
        """Hugging Face layout, as TRL's ``RewardTrainer`` saves a reward model: ``save_pretrained`` of an
        ``AutoModelForSequenceClassification`` (``num_labels=1``, the head as ``score``, ``pad_token_id`` set)
        + the tokenizer, so ``AutoModelForSequenceClassification.from_pretrained(path)`` gives this model's
        raw reward without pfkit. ``pfkit.json`` holds what HF has no field for: the normalisation, the
        likelihood term's weight, the policy it was trained on, the recipe and the held-out accuracy.

        The head's bias is folded into ``reward_mean`` (HF's ``score`` has no bias): it cancels in the
        Bradley-Terry loss and in the normalised reward, so nothing pfkit uses changes. With a likelihood
        term the full raw reward is the ``score`` logit + ``likelihood_weight`` * the summed response
        log-probabilities of ``AutoModelForCausalLM.from_pretrained(path)`` (the LM head is tied to the
        embeddings, or saved as ``lm_head.weight`` when it is not)."""
        from transformers import AutoModelForSequenceClassification

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.backbone.config)
        config.num_labels, config.architectures = 1, None
        config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
        if tokenizer is not None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        with torch.device("meta"):  # only the class and config are needed: the weights come from state_dict
            hf = AutoModelForSequenceClassification.from_config(config)
        prefix = hf.base_model_prefix
        state = {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        state["score.weight"] = self.head.weight.detach().cpu().contiguous()
        if self.lm_head is not None and not getattr(config, "tie_word_embeddings", False):
            state["lm_head.weight"] = self.lm_head.weight.detach().cpu().contiguous()
        hf.save_pretrained(path, state_dict=state)
        for old in ("reward_model.pt", "reward_meta.json"):  # an older layout in the same folder
            (path / old).unlink(missing_ok=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        bias = float(self.head.bias.detach().float())
        meta = {k: v for k, v in self.meta.items() if k != "likelihood_term"}
        info = {
            "kind": "reward_model",
            "load_with": "AutoModelForSequenceClassification (num_labels=1); pfkit.models.ScalarHeadModel.load",
            "normalization": {"mean": float(self.reward_mean) - bias, "std": float(self.reward_std),
                              "formula": "(score - mean) / std, clipped to [-10, 10]"},
            "likelihood_term": ({"weight": float(self.likelihood_weight.detach().float()),
                                 "formula": "score + weight * sum of the response tokens' log-probs "
                                            "under AutoModelForCausalLM.from_pretrained(this folder)"}
                                if self.lm_head is not None else None),
            "policy": policy, "policy_fingerprint": self.meta.get("policy_fingerprint"),
            "tokenizer": "saved here" if tokenizer is not None else None,
            "held_out_accuracy": self.meta.get("val/acc"),
            "recipe": recipe or {}, "meta": meta}
        write_pfkit_json(path, info)
        return path

    @classmethod
    def load(cls, path: str | Path = "embedded") -> ScalarHeadModel:
        """From a folder written by :meth:`save` (or the older ``reward_model.pt`` layout);
        ``"embedded"`` = pfkit/assets/reward (shipped with the kit)."""
        from transformers import AutoConfig, AutoModel

        folder = EMBEDDED_RM if str(path) == "embedded" else Path(path)
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if (folder / "reward_model.pt").is_file() and (folder / "config.json").is_file():
            return cls._load_old(folder)
        if not weights or not (folder / "config.json").is_file() or not (folder / "pfkit.json").is_file():
            raise FileNotFoundError(f"{folder} is not a saved reward model (needs config.json, *.safetensors and "
                                    f"pfkit.json); train one with `pfkit fit -c configs/reward_codegen.yaml`")
        from safetensors.torch import load_file

        info = json.loads((folder / "pfkit.json").read_text())
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        state = {}
        for f in weights:
            state.update(load_file(f))
        lt = info.get("likelihood_term")
        lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if lt else None
        body = AutoModel.from_config(config)
        meta = dict(info.get("meta") or {})
        model = cls(body, meta=meta, lm_head=lm_head)
        prefix = next(k.split(".", 1)[0] for k in state if k != "score.weight" and k != "lm_head.weight")
        body.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(prefix + ".")})
        with torch.no_grad():
            model.head.weight.copy_(state["score.weight"])
            model.head.bias.zero_()
            model.reward_mean.fill_(info["normalization"]["mean"])
            model.reward_std.fill_(info["normalization"]["std"])
            if lm_head is not None:
                model.likelihood_weight.fill_(lt["weight"])
                if "lm_head.weight" in state:
                    lm_head.weight = nn.Parameter(state["lm_head.weight"])
        return model.eval()

    @classmethod
    def _load_old(cls, folder: Path) -> ScalarHeadModel:
        """The layout before the Hugging Face one: config.json + reward_model.pt (a ScalarHeadModel
        state dict) + reward_meta.json."""
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        meta = json.loads((folder / "reward_meta.json").read_text()) if (folder / "reward_meta.json").is_file() else {}
        state = torch.load(folder / "reward_model.pt", map_location="cpu", weights_only=True)
        lm_head = None
        if meta.get("likelihood_term"):
            lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias="lm_head.bias" in state)
        model = cls(AutoModel.from_config(config), meta=meta, lm_head=lm_head)
        model.load_state_dict(state)
        return model.eval()


def write_pfkit_json(folder: str | Path, info: dict) -> Path:
    """``pfkit.json`` beside a saved Hugging Face checkpoint: what it is and how it was made (the fields
    HF's config has no place for), with the pfkit version that wrote it."""
    from pfkit import __version__

    out = Path(folder) / "pfkit.json"
    out.write_text(json.dumps({"pfkit_version": __version__, **info}, indent=2, default=str) + "\n")
    return out


def save_policy(model, tokenizer, folder: str | Path, *, state_dict: dict | None = None,
                recipe: dict | None = None, **info) -> Path:
    """A trained policy in the Hugging Face layout (``save_pretrained`` + tokenizer, loadable with
    ``AutoModelForCausalLM`` / :func:`load_policy`) plus ``pfkit.json`` (kind, the policy it started from,
    the recipe, any figures in ``info``)."""
    folder = Path(folder)
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    write_pfkit_json(folder, {"kind": "policy", "load_with": "AutoModelForCausalLM; pfkit.models.load_policy",
                              **info, "recipe": recipe or {}})
    return folder
