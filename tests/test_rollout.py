"""pfkit.rollout: sampling, log-probs, stop strings, EOS, determinism, top-p.

Models are built here (tiny random GPT-2 + a quickly trained byte-level BPE; a scripted model over a
character tokenizer for exact stop/EOS cases), so these tests do not depend on the shipped policy.
"""

import inspect
import json
import math
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from pfkit.rollout import (
    CODE_STOPS,
    DEDENT,
    _sample,  # the per-step sampler, unit-tested below
    find_stop,
    generate,
    sequence_logprobs,
    top_p_filter,
)

PROMPTS = [
    'def add(a, b):\n    """Return a + b."""\n',
    "def f(x):\n",
    'def longest(words):\n    """Return the longest word.\n    >>> longest(["a", "bb"])\n    \'bb\'\n    """\n',
]


@pytest.fixture(scope="module")
def bpe():
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([inspect.getsource(m) for m in (json.decoder, textwrap)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def gpt2(bpe):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(bpe), n_positions=256, n_embd=64, n_layer=2, n_head=4,
                     eos_token_id=bpe.eos_token_id, bos_token_id=bpe.eos_token_id, pad_token_id=bpe.eos_token_id)
    return GPT2LMHeadModel(cfg).eval()


def plain_logprobs(model, sequences, attention_mask, T):
    """Independent reference: full forward, full log-softmax, gather."""
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0) * attention_mask
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=pos).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, sequences[:, 1:, None]).squeeze(-1)
    return logp[:, -T:] * attention_mask[:, -T:]


@pytest.mark.parametrize("backend", ["gpt2", "hf"])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_match_teacher_forcing(gpt2, bpe, backend, temperature, top_p):
    r = generate(gpt2, bpe, PROMPTS, max_new_tokens=12, temperature=temperature, top_p=top_p, seed=1,
                 backend=backend)
    lens = [len(bpe(p)["input_ids"]) for p in PROMPTS]
    assert len(set(lens)) == 3 and r.prompt_len == max(lens)  # really left-padded, different lengths
    assert r.attention_mask[:, : r.prompt_len].sum(-1).tolist() == lens
    T = r.response_len
    lp = sequence_logprobs(gpt2, r.sequences, r.attention_mask, T)
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(plain_logprobs(gpt2, r.sequences, r.attention_mask, T), r.logprobs,
                               atol=1e-4, rtol=0)
    # log-probs under the distribution actually sampled from (temperature + top-p)
    with torch.no_grad():
        pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0) * r.attention_mask
        logits = gpt2(input_ids=r.sequences, attention_mask=r.attention_mask, position_ids=pos).logits
    logits = logits[:, -T - 1:-1]
    ref = top_p_filter(logits / temperature, top_p).log_softmax(-1)
    ref = ref.gather(-1, r.response_ids[..., None]).squeeze(-1) * r.response_mask
    torch.testing.assert_close(r.sample_logprobs, ref, atol=1e-4, rtol=0)
    assert r.logprobs.requires_grad is False and len(r.texts) == 3


def test_sequence_logprobs_grad_and_entropy(gpt2, bpe):
    r = generate(gpt2, bpe, PROMPTS[:2], max_new_tokens=6, seed=0)
    lp, ent = sequence_logprobs(gpt2, r.sequences, r.attention_mask, r.response_len, return_entropy=True)
    lp.sum().backward()  # rollout tensors are usable under autograd (not inference tensors)
    assert gpt2.lm_head.weight.grad is not None
    gpt2.zero_grad()
    pos = (r.attention_mask.cumsum(-1) - 1).clamp(min=0) * r.attention_mask
    with torch.no_grad():
        logits = gpt2(input_ids=r.sequences, attention_mask=r.attention_mask, position_ids=pos).logits
    p = logits[:, -r.response_len - 1:-1].softmax(-1)
    ref = -(p * p.log()).sum(-1) * r.response_mask
    torch.testing.assert_close(ent.detach(), ref, atol=1e-4, rtol=0)


def test_n_samples_prompt_major_and_backends_agree(gpt2, bpe):
    fast = generate(gpt2, bpe, PROMPTS, max_new_tokens=8, temperature=0.0, group_size=2, backend="gpt2")
    slow = generate(gpt2, bpe, PROMPTS, max_new_tokens=8, temperature=0.0, group_size=2, backend="hf")
    assert fast.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(fast.sequences, slow.sequences)
    assert torch.equal(fast.response_ids[0], fast.response_ids[1])  # greedy: both samples equal
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-4, rtol=0)


def test_determinism_under_seed(gpt2, bpe):
    a = generate(gpt2, bpe, PROMPTS, max_new_tokens=10, seed=123)
    b = generate(gpt2, bpe, PROMPTS, max_new_tokens=10, seed=123)
    c = generate(gpt2, bpe, PROMPTS, max_new_tokens=10, seed=124)
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    state = torch.get_rng_state()
    generate(gpt2, bpe, PROMPTS[:1], max_new_tokens=3, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_greedy_equals_hf_generate(gpt2, bpe):
    r = generate(gpt2, bpe, PROMPTS, max_new_tokens=10, temperature=0.0)
    enc = bpe(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        hf = gpt2.generate(**enc, do_sample=False, max_new_tokens=10, pad_token_id=bpe.pad_token_id)
    assert torch.equal(enc["input_ids"], r.sequences[:, : r.prompt_len])
    hf_resp = hf[:, enc["input_ids"].shape[1]:][:, : r.response_len]
    m = r.response_mask.bool()
    assert torch.equal(hf_resp[m], r.response_ids[m])


def test_early_finish_and_cache_compaction_keep_logprobs_exact(gpt2, bpe):
    # many "EOS" ids: rows end at different steps, so the fast path drops rows and compacts its cache
    eos = list(range(0, 400, 3))
    r = generate(gpt2, bpe, PROMPTS * 4, max_new_tokens=16, seed=3, eos_token_id=eos)
    lens = r.response_mask.sum(-1)
    assert len(set(lens.tolist())) > 2 and "eos" in r.finish_reasons
    for i, reason in enumerate(r.finish_reasons):
        L = int(lens[i])
        if reason == "eos":
            assert int(r.response_ids[i, L - 1]) in eos  # EOS kept in the mask ...
            assert not any(int(t) in eos for t in r.response_ids[i, : L - 1])
        assert (r.response_ids[i, L:] == bpe.pad_token_id).all()  # ... nothing after it
    lp = sequence_logprobs(gpt2, r.sequences, r.attention_mask, r.response_len)
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)


def test_min_new_tokens_bans_eos(gpt2, bpe):
    eos = list(range(0, 400, 3))
    r = generate(gpt2, bpe, PROMPTS, max_new_tokens=6, min_new_tokens=6, seed=3, eos_token_id=eos)
    assert r.response_mask.all() and r.finish_reasons == ["length"] * 3


# ------------------------------------------------------------------------------ exact stop / EOS cases

PIECES = ["    return", " x", "x\n", "\ndef"]


@pytest.fixture(scope="module")
def chartok():
    vocab = {"<eos>": 0}
    for piece in [chr(i) for i in range(32, 127)] + ["\n"] + PIECES:
        vocab[piece] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<eos>",
                                   clean_up_tokenization_spaces=False)


class ScriptedLM(torch.nn.Module):
    """Puts all mass on a fixed token sequence per row (then on 'z'): exact, known outputs."""

    def __init__(self, tok, scripts):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_positions=512, model_type="scripted")
        self.V = len(tok)
        self.scripts = [[tok.convert_tokens_to_ids(p) for p in s] for s in scripts]
        self.filler = tok.convert_tokens_to_ids("z")

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, past_key_values=None):
        if past_key_values is None:
            self.P = input_ids.shape[1]
        step = attention_mask.shape[1] - self.P
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.V)
        for b, s in enumerate(self.scripts):
            logits[b, -1, s[step] if step < len(s) else self.filler] = 30.0
        return SimpleNamespace(logits=logits, past_key_values=object())


def run_script(tok, scripts, prompts=None, **kw):
    model = ScriptedLM(tok, scripts)
    prompts = prompts or ["def f(x):\n"] * len(scripts)
    return generate(model, tok, prompts, temperature=0.0, **kw)


def test_stop_strings_cut_text_and_mask(chartok):
    scripts = [
        ["    return", " x", "\n", "d", "e", "f", " ", "g"],  # stop begins at a token start: token dropped
        ["    return", " x", "x\n", "d", "e", "f"],  # stop begins mid-token: that token kept, text cut
        ["    return", " x", "\n", "p", "r"],  # dedent
        ["    return", " x", "\n", "\n", " ", " ", "y", "\n", "z"],  # blank line is not a dedent
        ["d", "e", "f", " "],  # prompt ends with "\n": opening "def" cuts at 0
        ["    return", " x", "\ndef", "z"],  # the stop is one whole token
    ]
    r = run_script(chartok, scripts, max_new_tokens=12, stop=("\ndef", DEDENT))
    assert r.texts == ["    return x", "    return xx", "    return x", "    return x\n\n  y", "", "    return x"]
    assert r.response_mask.sum(-1).tolist() == [2, 3, 2, 7, 0, 2]
    assert r.finish_reasons == ["stop"] * 6
    assert r.response_len == 7  # trimmed to the longest kept response
    for i in range(6):  # everything past the kept tokens is padding with zero log-prob
        L = int(r.response_mask[i].sum())
        assert (r.response_ids[i, L:] == chartok.pad_token_id).all() and (r.logprobs[i, L:] == 0).all()
        assert (r.attention_mask[i, r.prompt_len + L:] == 0).all()
    # kept tokens decode to the text, plus at most the stop's first characters inside the last token
    assert chartok.decode(r.response_ids[1, :3].tolist()) == "    return xx\n"


def test_stop_in_mask_keeps_the_stop_tokens(chartok):
    scripts = [["    return", " x", "\n", "d", "e", "f", " "], ["    return", " x", "\n", "p", "r"]]
    r = run_script(chartok, scripts, max_new_tokens=10, stop=("\ndef", DEDENT), stop_in_mask=True)
    assert r.texts == ["    return x", "    return x"]
    assert r.response_mask.sum(-1).tolist() == [4, 4]  # the dedent "\nd" completes before "\ndef"
    r = run_script(chartok, scripts, max_new_tokens=10, stop=("\ndef",), stop_in_mask=True)
    assert r.response_mask.sum(-1).tolist() == [6, 10] and r.finish_reasons == ["stop", "length"]


def test_eos_ends_sequence_and_is_kept(chartok):
    scripts = [["    return", " x", "<eos>", "a"], ["a", "b", "c", "d", "e"]]
    r = run_script(chartok, scripts, max_new_tokens=5)
    assert r.texts == ["    return x", "abcde"]
    assert r.finish_reasons == ["eos", "length"]
    assert r.response_mask.sum(-1).tolist() == [3, 5]
    assert int(r.response_ids[0, 2]) == chartok.eos_token_id
    # the stop beats a later EOS; an EOS before any stop wins
    r = run_script(chartok, [[" ", "a", "\n", "d", "e", "f", "<eos>"], [" ", "a", "<eos>", "\n", "d", "e", "f"]],
                   max_new_tokens=8, stop=CODE_STOPS)
    assert r.finish_reasons == ["stop", "eos"] and r.texts == [" a", " a"]
    assert r.response_mask.sum(-1).tolist() == [2, 3]
    # the prompt ends with a newline, so an unindented first line is a dedent: empty response
    r = run_script(chartok, [["a", "<eos>"]], max_new_tokens=4, stop=CODE_STOPS)
    assert r.texts == [""] and r.finish_reasons == ["stop"] and r.response_mask.sum() == 0
    assert r.response_ids.shape == (1, 1)  # one masked column keeps the shapes usable


def test_find_stop():
    assert find_stop("    return 1\ndef g():", CODE_STOPS) == 12
    assert find_stop("    return 1\n\n    x = 2", CODE_STOPS) is None
    assert find_stop("    a\nprint(1)\nclass A", ("\nclass", "\nprint")) == 5
    assert find_stop("def g():", CODE_STOPS, newline_before=True) == 0
    assert find_stop("def g():", CODE_STOPS) is None
    assert find_stop("x\n", ("\n",), newline_before=True) == 1  # the virtual newline alone never matches


# ------------------------------------------------------------------------------------------------ top-p


def test_top_p_filter_hand_made():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).nonzero().squeeze(-1).tolist()  # noqa: E731
    assert kept(0.4) == [1]  # the top token alone has 0.5 >= 0.4
    assert kept(0.5) == [1]
    assert kept(0.8) == [1, 3]  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept(0.81) == [0, 1, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    renorm = top_p_filter(logits, 0.8).softmax(-1)
    torch.testing.assert_close(renorm, torch.tensor([0.0, 0.625, 0.0, 0.375]))
    with pytest.raises(ValueError):
        top_p_filter(logits, 0.0)


def test_sampler_respects_top_p_and_frequencies():
    logits = torch.tensor([0.15, 0.5, 0.05, 0.3]).log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    tok, raw, samp = _sample(logits, 1.0, 0.8, g, None)
    counts = torch.bincount(tok, minlength=4).float() / tok.numel()
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1].item() - 0.625) < 0.02
    torch.testing.assert_close(raw, logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1))
    assert torch.allclose(samp[tok == 1], torch.tensor(math.log(0.625)))


@pytest.mark.parametrize("scale", [8.0, 2.5, 0.1])  # peaked (top-16 holds 0.9), medium (top-64), flat (full sort)
def test_sampler_partial_sort_stages_keep_exact_top_p(scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 300, generator=g) * scale
    state = {}
    tok, raw, samp = _sample(logits, 0.8, 0.9, g, None, state=state)
    ref = top_p_filter(logits / 0.8, 0.9).log_softmax(-1)
    assert torch.isfinite(ref.gather(-1, tok[:, None])).all()  # every token from the nucleus
    torch.testing.assert_close(samp, ref.gather(-1, tok[:, None]).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(raw, logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1))
    assert state.get("full_sort", False) == (scale < 1)


def test_bad_inputs(gpt2, bpe):
    with pytest.raises(TypeError, match="list of strings"):
        generate(gpt2, bpe, "def f():", max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(gpt2, bpe, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="positions"):
        generate(gpt2, bpe, PROMPTS, max_new_tokens=1000)
    with pytest.raises(ValueError, match="response_len"):
        sequence_logprobs(gpt2, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long), 4)


def test_many_rows_grouped_by_length_come_back_in_input_order(gpt2, bpe):
    # 20 prompts of very different lengths, 2 samples each: the fast path splits 40 rows into 4 length groups
    prompts = [PROMPTS[i % 3] * (1 + i % 4) if i % 5 else "x" for i in range(20)]
    fast = generate(gpt2, bpe, prompts, max_new_tokens=6, temperature=0.0, group_size=2, backend="gpt2")
    slow = generate(gpt2, bpe, prompts, max_new_tokens=6, temperature=0.0, group_size=2, backend="hf")
    assert torch.equal(fast.sequences, slow.sequences)
    for i, p in enumerate(prompts):
        ids = bpe(p)["input_ids"]
        for row in (2 * i, 2 * i + 1):
            assert fast.sequences[row, fast.prompt_len - len(ids): fast.prompt_len].tolist() == ids
            assert int(fast.attention_mask[row, : fast.prompt_len].sum()) == len(ids)
    sampled = generate(gpt2, bpe, prompts, max_new_tokens=6, group_size=2, seed=0, eos_token_id=list(range(0, 400, 4)))
    lp = sequence_logprobs(gpt2, sampled.sequences, sampled.attention_mask, sampled.response_len)
    torch.testing.assert_close(lp, sampled.logprobs, atol=1e-4, rtol=0)


def test_other_architectures_use_their_own_forward(bpe):
    # any causal LM works through its forward + DynamicCache (here a tiny Llama: rotary positions, GQA)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=bpe.eos_token_id, pad_token_id=bpe.eos_token_id, bos_token_id=bpe.eos_token_id)
    llama = LlamaForCausalLM(cfg).eval()
    eos = list(range(0, 400, 4))  # rows end at different steps: the cache drops finished rows
    r = generate(llama, bpe, PROMPTS * 3, max_new_tokens=8, seed=0, eos_token_id=eos)
    assert len(set(r.response_mask.sum(-1).tolist())) > 1
    lp = sequence_logprobs(llama, r.sequences, r.attention_mask, r.response_len)
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)
    greedy = generate(llama, bpe, PROMPTS, max_new_tokens=6, temperature=0.0, eos_token_id=[])
    enc = bpe(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        hf = llama.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    assert torch.equal(hf[:, enc["input_ids"].shape[1]:], greedy.response_ids)


# --------------------------------------------------------------- the generic static-cache path, the kernels


def tiny_causal_lm(arch, bpe):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg_cls, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=bpe.eos_token_id, pad_token_id=bpe.eos_token_id, bos_token_id=bpe.eos_token_id)
    return cls(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_cache_path_matches_teacher_forcing_and_the_dynamic_path(bpe, arch):
    from pfkit.rollout.runners import _StaticRunner

    model = tiny_causal_lm(arch, bpe)
    assert _StaticRunner.supports(model) and _StaticRunner(model).own_kernel
    eos = list(range(0, 400, 4))  # rows end at different steps: finished rows are dropped from the cache
    prompts = PROMPTS * 3
    r = generate(model, bpe, prompts, max_new_tokens=8, seed=0, eos_token_id=eos, group_size=2, top_p=0.9)
    assert len(set(r.response_mask.sum(-1).tolist())) > 1
    lp = sequence_logprobs(model, r.sequences, r.attention_mask, r.response_len)
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)
    # same draws as the DynamicCache path (same generator, same logits up to rounding)
    d = generate(model, bpe, prompts, max_new_tokens=8, seed=0, eos_token_id=eos, group_size=2, top_p=0.9,
                 backend="hf")
    assert torch.equal(r.response_ids, d.response_ids) and r.texts == d.texts
    greedy = generate(model, bpe, PROMPTS, max_new_tokens=6, temperature=0.0, eos_token_id=[], backend="static")
    enc = bpe(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        hf = model.generate(**enc, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                            pad_token_id=bpe.eos_token_id)
    assert torch.equal(hf[:, enc["input_ids"].shape[1]:], greedy.response_ids)
    assert model.config._attn_implementation == "sdpa"  # the decode kernel is switched back after each step


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_prefill_in_length_groups_changes_no_number(bpe, arch, monkeypatch):
    """The static path's prefill runs groups of similar prompt length over their own columns only (less
    padding); the tokens, log-probs and texts are those of one batch-wide prefill, and equal teacher forcing."""
    from pfkit.rollout.runners import _StaticRunner

    model = tiny_causal_lm(arch, bpe)
    prompts = [p + " and more" * k for k, p in enumerate(PROMPTS * 3)]  # lengths that differ a lot
    kw = dict(max_new_tokens=6, seed=3, eos_token_id=[], top_p=0.9, backend="static")
    monkeypatch.setattr(_StaticRunner, "GROUP_MIN", 1)
    monkeypatch.setattr(_StaticRunner, "GROUPS", 1)
    one = generate(model, bpe, prompts, **kw)
    monkeypatch.setattr(_StaticRunner, "GROUPS", 3)
    grouped = generate(model, bpe, prompts, **kw)
    assert torch.equal(one.response_ids, grouped.response_ids) and one.texts == grouped.texts
    torch.testing.assert_close(grouped.logprobs, one.logprobs, atol=1e-5, rtol=0)
    lp = sequence_logprobs(model, grouped.sequences, grouped.attention_mask, grouped.response_len)
    torch.testing.assert_close(lp, grouped.logprobs, atol=1e-4, rtol=0)


def test_static_backend_refuses_a_model_without_a_static_cache(gpt2, bpe):
    with pytest.raises(ValueError, match="backend='static'"):
        generate(ScriptedLM(bpe, [["a"]]), bpe, ["x"], max_new_tokens=1, backend="static")
    with pytest.raises(ValueError, match="backend must be"):
        generate(gpt2, bpe, ["x"], max_new_tokens=1, backend="vllm-typo")


def test_decode_attention_kernel_equals_sdpa_with_grouped_heads():
    from pfkit.rollout.runners import _decode_attention

    g = torch.Generator().manual_seed(0)
    b, H, kv, dh, L, n = 3, 6, 2, 8, 12, 9
    q = torch.randn(b, H, 1, dh, generator=g)
    k, v = torch.randn(b, kv, L, dh, generator=g), torch.randn(b, kv, L, dh, generator=g)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask[0, ..., :3] = False                      # left padding of row 0
    out, _ = _decode_attention(None, q, k, v, mask, scaling=0.3)
    ref = F.scaled_dot_product_attention(q, k[:, :, :n].repeat_interleave(H // kv, 1),
                                         v[:, :, :n].repeat_interleave(H // kv, 1), attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_sigmoid_form_of_tanh_gelu_is_the_same_function():
    from pfkit.rollout.runners import _gelu_tanh_sigmoid

    x = torch.linspace(-12, 12, 10001)
    torch.testing.assert_close(_gelu_tanh_sigmoid(x.clone()), F.gelu(x, approximate="tanh"), atol=2e-6, rtol=0)
