"""SFT on the code task: completion-only labels, a short run lowers the loss, pass-rate summaries."""

import lightning as L
import pytest
import torch

from pfkit import models
from pfkit.data.code import CodeSFTDataModule
from pfkit.modules.sft import SFTModule, rate_summary

TINY = dict(vocab_size=300, n_layer=1, n_embd=64, n_head=2, n_positions=256, eval_samples=0, save_policy=False)


@pytest.fixture(scope="module")
def dm():
    d = CodeSFTDataModule(seed=0, n_train=64, n_val=4, n_test=4, batch_size=16)
    d.setup()
    d.tokenizer = models.train_tokenizer(d.corpus(), vocab_size=300)
    return d


def test_labels_cover_exactly_the_completion_and_eos(dm):
    tok = dm.tokenizer
    prompt, completion = dm.train_pairs[0]
    batch = dm.collate([(prompt, completion), dm.train_pairs[1]])
    ids, lab, att = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    kept = ids[lab != -100].tolist()
    assert kept[-1] == tok.eos_token_id
    assert tok.decode(kept[:-1]) == completion
    assert tok.decode(ids[att.bool()].tolist()[: len(ids) - len(kept)]).startswith(prompt[:20])
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert (lab[:n_prompt] == -100).all() and (lab[n_prompt:att.sum()] != -100).all()
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_wrong_fraction_mixes_in_wrong_completions():
    d = CodeSFTDataModule(seed=0, n_train=100, n_val=4, n_test=4, wrong_fraction=0.3)
    d.setup()
    refs = {p.prompt: p.reference for p in d.problems["train"]}
    n_wrong = sum(c != refs[p] for p, c in d.train_pairs)
    assert 15 <= n_wrong <= 45
    with pytest.raises(ValueError, match="wrong_fraction"):
        CodeSFTDataModule(wrong_fraction=1.0)


def test_short_sft_run_lowers_completion_loss(dm):
    L.seed_everything(0)
    module = SFTModule(lr=5e-3, warmup_steps=2, **TINY)
    trainer = L.Trainer(max_steps=15, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm)
    assert dm.tokenizer is module.tokenizer  # the policy's tokenizer feeds the datamodule
    fixed = dm.collate(dm.train_pairs[:16])
    fresh = models.build_policy(module.tokenizer, n_layer=1, n_embd=64, n_head=2, n_positions=256).eval()
    module.model.eval()
    with torch.no_grad():
        before = fresh(**fixed).loss.item()
        after = module(**fixed).loss.item()
    assert before > 5.0 and after < before - 1.0, (before, after)


def test_rate_summary_hand_computed():
    s = rate_summary([0.0, 0.0, 0.25, 0.5, 1.0])
    assert s["pass@1"] == pytest.approx(1.75 / 5)
    assert (s["frac_zero"], s["frac_mixed"], s["frac_one"]) == (0.4, 0.4, 0.2)
