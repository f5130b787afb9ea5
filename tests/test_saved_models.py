"""Saved reward models and policies are Hugging Face checkpoints: transformers alone reads them, and gives
the same numbers as pfkit (a reward model loads as AutoModelForSequenceClassification, num_labels=1, as TRL's
RewardTrainer saves one); pfkit.json says what each folder is."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pfkit import models
from pfkit.models import ScalarHeadModel, encode
from pfkit.tasks import codegen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    probs = codegen.generate(12, seed=5)
    tok = models.train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=300)
    torch.manual_seed(0)
    policy = models.build_policy(tok, n_layer=2, n_embd=48, n_head=2)
    return probs, tok, policy


def _trained_like(rm: ScalarHeadModel) -> ScalarHeadModel:
    """Non-trivial head, bias and normalisation (a fresh head has bias 0; training or folding moves it)."""
    with torch.no_grad():
        rm.head.bias.fill_(0.37)
        rm.reward_mean.fill_(-1.25)
        rm.reward_std.fill_(2.5)
        if rm.has_likelihood_term:
            rm.likelihood_weight.fill_(0.6)
    return rm.eval()


def _right_padded(tok, prompts, responses):
    """Right padding, as TRL's preference collator pads: HF's positions then need no position_ids."""
    rows = [encode(tok, [p], [r]) for p, r in zip(prompts, responses)]
    L = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    rmask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        n = r["input_ids"].shape[1]
        ids[i, :n], mask[i, :n], rmask[i, :n] = r["input_ids"][0], r["attention_mask"][0], r["response_mask"][0]
    return ids, mask, rmask


def test_reward_model_loads_with_transformers_and_scores_the_same(tiny, tmp_path):
    probs, tok, policy = tiny
    rm = _trained_like(ScalarHeadModel.from_policy(policy))
    rm.save(tmp_path / "rm", tok, policy="some/policy", recipe={"lr": 1e-4})
    prompts, resp = [p.prompt for p in probs[:4]], [p.reference for p in probs[:4]]
    ids, mask, rmask = _right_padded(tok, prompts, resp)
    assert (mask == 0).any()  # the batch really is padded

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits
        ours = rm.score(ids, mask)
    assert logits.shape == (4, 1)
    # HF's score has no bias: it is folded into the normalisation mean, so raw differs by exactly the bias
    # and the normalised reward is the same
    torch.testing.assert_close(logits[:, 0], ours - 0.37, atol=1e-5, rtol=1e-5)
    info = json.loads((tmp_path / "rm" / "pfkit.json").read_text())
    norm = info["normalization"]
    torch.testing.assert_close((logits[:, 0] - norm["mean"]) / norm["std"], rm.normalize(ours), atol=1e-5, rtol=1e-5)
    assert info["kind"] == "reward_model" and info["policy"] == "some/policy" and info["recipe"] == {"lr": 1e-4}
    assert info["policy_fingerprint"] == models.policy_fingerprint(policy)
    assert info["likelihood_term"] is None

    back = ScalarHeadModel.load(tmp_path / "rm")
    with torch.no_grad():
        torch.testing.assert_close(back.score(ids, mask), logits[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.score_texts(tok, prompts, resp), rm.score_texts(tok, prompts, resp),
                               atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "rm" / "reward_model.pt").exists()


def test_likelihood_term_reward_from_transformers_alone(tiny, tmp_path):
    """score logit + weight * sum of response log-probs of the causal LM read from the same folder."""
    probs, tok, policy = tiny
    rm = _trained_like(ScalarHeadModel.from_policy(policy, likelihood_term=True))
    rm.save(tmp_path / "rm", tok)
    prompts, resp = [p.prompt for p in probs[:3]], [p.reference for p in probs[:3]]
    ids, mask, rmask = _right_padded(tok, prompts, resp)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "rm").eval()
    w = json.loads((tmp_path / "rm" / "pfkit.json").read_text())["likelihood_term"]["weight"]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        full = hf(input_ids=ids, attention_mask=mask).logits[:, 0] + w * (logp * rmask[:, 1:]).sum(-1)
        ours = rm.score(ids, mask, rmask)
        back = ScalarHeadModel.load(tmp_path / "rm").score(ids, mask, rmask)
    assert w == pytest.approx(0.6)
    torch.testing.assert_close(full, ours - 0.37, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back, full, atol=1e-5, rtol=1e-5)


def test_untied_lm_head_is_saved_for_the_causal_lm(tiny, tmp_path):
    probs, tok, _ = tiny
    torch.manual_seed(1)
    policy = models.build_policy(tok, n_layer=1, n_embd=32, n_head=2, tie_word_embeddings=False)
    rm = _trained_like(ScalarHeadModel.from_policy(policy, likelihood_term=True))
    with torch.no_grad():
        rm.lm_head.weight.add_(0.1)  # differs from the embeddings
    rm.save(tmp_path / "rm", tok)
    enc = encode(tok, [probs[0].prompt], [probs[0].reference])
    back = ScalarHeadModel.load(tmp_path / "rm")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "rm")
    torch.testing.assert_close(lm.lm_head.weight, rm.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(back.score(enc["input_ids"], enc["attention_mask"], enc["response_mask"]),
                                   rm.score(enc["input_ids"], enc["attention_mask"], enc["response_mask"]) - 0.37,
                                   atol=1e-5, rtol=1e-5)


def test_the_shipped_reward_model_is_in_the_hf_layout():
    folder = models.EMBEDDED_RM
    assert (folder / "pfkit.json").is_file() and (folder / "model.safetensors").is_file()
    assert not (folder / "reward_model.pt").exists()  # one copy, converted
    info = json.loads((folder / "pfkit.json").read_text())
    assert info["kind"] == "reward_model" and 0.5 < info["held_out_accuracy"] < 1
    rm = ScalarHeadModel.load("embedded")
    assert rm.has_likelihood_term and rm.meta["policy_fingerprint"] == info["policy_fingerprint"]


def test_the_old_layout_still_loads(tiny, tmp_path):
    probs, tok, policy = tiny
    rm = _trained_like(ScalarHeadModel.from_policy(policy, likelihood_term=True))
    old = tmp_path / "old"
    old.mkdir()
    rm.backbone.config.save_pretrained(old)
    torch.save({k: v.detach() for k, v in rm.state_dict().items()}, old / "reward_model.pt")
    (old / "reward_meta.json").write_text(json.dumps(rm.meta))
    back = ScalarHeadModel.load(old)
    prompts, resp = [probs[0].prompt], [probs[0].reference]
    torch.testing.assert_close(back.score_texts(tok, prompts, resp, normalize=False),
                               rm.score_texts(tok, prompts, resp, normalize=False))


def test_save_policy_writes_hf_checkpoint_and_pfkit_json(tiny, tmp_path):
    probs, tok, policy = tiny
    models.save_policy(policy, tok, tmp_path / "p", started_from="embedded", recipe={"module": "SFTModule"})
    info = json.loads((tmp_path / "p" / "pfkit.json").read_text())
    assert info["kind"] == "policy" and info["started_from"] == "embedded" and info["recipe"]["module"] == "SFTModule"
    model, tok2 = models.load_policy(tmp_path / "p")
    enc = tok([probs[0].prompt], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, policy.eval()(**enc).logits)
