"""Tokenizer training, the GPT-2 builder and load_policy on a real (tiny, random) checkpoint folder."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from pfkit import models
from pfkit.tasks import codegen

CODE = (
    'def f(xs: list[int]) -> str:\n'
    '    """Tabs\tand  double  spaces, quotes \' " and unicode \u00e9 \u2211."""\n'
    '    if xs:\n'
    '\tfor x in xs:\n'
    '            y = [x  *  2]   # trailing spaces   \n'
    '    return "a\\nb"\n\n\n'
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [p.prompt + p.reference for p in codegen.generate(200, seed=0)]
    return models.train_tokenizer(texts, vocab_size=400)


def test_tokenizer_is_fast_with_special_tokens(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.eos_token == models.EOS and tokenizer.pad_token == models.PAD
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert 300 < len(tokenizer) <= 400


def test_tokenizer_round_trips_code_exactly(tokenizer):
    for text in [CODE, "    result = [x for x in nums if x % 2 == 0]\n    return result\n", "\n\n    \t \n"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    p = codegen.generate(1, seed=9)[0]
    assert tokenizer.decode(tokenizer(p.prompt)["input_ids"] + tokenizer(p.reference)["input_ids"]) == \
        p.prompt + p.reference
    # the corpus is actually learned: common code fragments are single tokens
    assert len(tokenizer("    result = [x for x in nums", add_special_tokens=False)["input_ids"]) <= 12


def test_build_policy_default_size(tokenizer):
    model = models.build_policy(tokenizer)
    n = models.num_parameters(model)
    assert 800_000 <= n <= 5_000_000  # ~1 M with the task's 1k vocabulary; this fixture's is 400
    assert model.config.vocab_size == len(tokenizer) and model.config.model_type == "gpt2"


def test_load_policy_round_trip(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = models.build_policy(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=64).eval()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    assert list((tmp_path / "tiny").glob("*.safetensors"))
    loaded, tok = models.load_policy(tmp_path / "tiny")
    ids = torch.tensor([tokenizer("def f(x):\n    return x\n")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert tok.decode(ids[0]) == "def f(x):\n    return x\n"
    assert tok.padding_side == "left" and tok.pad_token_id == tokenizer.pad_token_id


def test_load_policy_errors_say_what_and_how(tmp_path):
    with pytest.raises(models.PolicyPathError, match="does not exist.*save_pretrained"):
        models.load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.PolicyPathError, match="no config.json"):
        models.load_policy(tmp_path / "empty")
    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "config.json").write_text("{}")
    with pytest.raises(models.PolicyPathError, match="no weights"):
        models.load_policy(tmp_path / "cfgonly")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(models.PolicyPathError, match="is a file"):
        models.load_policy(tmp_path / "file.txt")
    assert issubclass(models.PolicyPathError, FileNotFoundError)  # the CLI prints these as one line


def test_load_policy_missing_tokenizer(tmp_path, tokenizer):
    model = models.build_policy(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    model.save_pretrained(tmp_path / "notok")
    with pytest.raises(models.PolicyPathError, match="tokenizer"):
        models.load_policy(tmp_path / "notok")


def test_shipped_default_policy():
    """pfkit/assets/policy: a real checkpoint (safetensors + tokenizer + config) within the documented budget."""
    import json

    folder = models.EMBEDDED
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size <= 20e6 and list(folder.glob("*.safetensors"))
    model, tok = models.load_policy("embedded")
    assert model.config.model_type == "gpt2" and 900_000 <= models.num_parameters(model) <= 5_000_000
    p = codegen.splits(0, n_train=0, n_val=0, n_test=3)["test"][2]
    assert tok.decode(tok(p.prompt + p.reference)["input_ids"]) == p.prompt + p.reference
    figures = json.loads((folder / "eval.json").read_text())  # written by scripts/make_default_policy.py
    assert figures["split"] == "test" and figures["problems"] >= 96 and figures["samples"] == 8
    assert 0.15 <= figures["pass@1"] <= 0.6 and figures["frac_mixed"] >= 0.25
