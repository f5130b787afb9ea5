"""Vision-language rollouts: a tiny LLaVA (CLIP + Llama, built from transformers configs) and a tiny
Qwen2.5-VL (3-D RoPE) sample with a KV cache; their rollout log-probs equal a teacher-forced pass with the
same pixel inputs (1e-4), the image changes them, and rows keep their images through select/cat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfkit.models import build_vlm, is_vision_language, load_vlm, train_tokenizer
from pfkit.rollout import vlm

TEXTS = ["How many red circles are there? 3", "What colour is the triangle? blue", "Is it left or right? left",
         "Which bar is the tallest? Count from the left. 2", "Are there more red shapes or blue shapes? red"] * 10


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model, proc = build_vlm(tok)
    return model.eval(), proc


class _QwenProcessor:
    """The part of Qwen2.5-VL's processor that a rollout uses (text + image -> ids with the image pad token
    expanded, pixel_values, image_grid_thw), built without torchvision (the real one needs it for videos)."""

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def __call__(self, text, images, return_tensors="pt"):
        pix = self.image_processor(images=images, return_tensors="pt")
        n = int(pix["image_grid_thw"][0].prod()) // self.image_processor.merge_size ** 2
        out = self.tokenizer([t.replace(self.image_token, self.image_token * n) for t in text], return_tensors="pt")
        return {**out, "pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"]}


@pytest.fixture(scope="module")
def qwen():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS, vocab_size=300)
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    ids = {s: tok.convert_tokens_to_ids(s) for s in special}
    ip = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                               max_pixels=32 * 32)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, window_size=32,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    return model, _QwenProcessor(tok, ip)


PROMPTS = ["How many red circles are there?", "What colour is the triangle?", "Is it left or right of it?"]


@pytest.mark.parametrize("which", ["llava", "qwen"])
def test_rollout_logprobs_equal_teacher_forced(which, request):
    torch.set_num_threads(1)
    model, proc = request.getfixturevalue(which)
    images = _images(3)
    images[2] = None if which == "llava" else images[2]  # LLaVA: a text-only prompt in the same batch
    ro = vlm.generate(model, proc, PROMPTS, images, max_new_tokens=6, group_size=2, seed=0, min_new_tokens=3)
    assert len(ro) == 6 and ro.response_mask[:, :3].all()
    with torch.no_grad():
        lp = ro.logprobs_under(model)
    m = ro.response_mask.bool()
    assert torch.allclose(lp[m], ro.logprobs[m], atol=1e-4), (lp[m] - ro.logprobs[m]).abs().max()
    assert (lp[~m] == 0).all()
    with torch.no_grad():  # some rows, in any order: the VLM scorer on those rows with their own images
        rows = torch.tensor([5, 0, 3])
        want = vlm.sequence_logprobs(model, ro.sequences[rows], ro.attention_mask[rows], ro.response_len,
                                     [ro.pixel_inputs[i] for i in rows.tolist()])
        assert torch.allclose(ro.logprobs_under(model, rows, shared_prefix=True), want, atol=1e-6)
        assert torch.allclose(ro.select(rows, trim=False).logprobs_under(model), want, atol=1e-6)
        assert torch.allclose(want, lp[rows], atol=1e-5)
    # the image is used: another image gives other log-probs for the same tokens
    other = [dict(p, pixel_values=p["pixel_values"].flip(-1)) if p is not None else None for p in ro.pixel_inputs]
    with torch.no_grad():
        lp2 = vlm.sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_len, other)
    rows = torch.tensor([p is not None for p in ro.pixel_inputs])
    assert (lp2[rows] - lp[rows]).abs().max() > 1e-3
    # same seed, same tokens
    ro2 = vlm.generate(model, proc, PROMPTS, images, max_new_tokens=6, group_size=2, seed=0, min_new_tokens=3)
    assert torch.equal(ro.sequences, ro2.sequences)


@pytest.mark.parametrize("which", ["llava", "qwen"])
def test_image_placeholder_token_is_never_sampled(which, request):
    """A policy that prefers the image token (its logit +100 here; a tiny policy at T=1 sampled it once
    and the next log-prob pass failed: 897 image tokens, 896 image features) still never emits it, and
    its rollout log-probs equal the teacher-forced ones (both exclude the placeholder)."""
    model, proc = request.getfixturevalue(which)
    ids = vlm.placeholder_ids(model)
    assert ids and proc.tokenizer.convert_tokens_to_ids(proc.image_token) in ids

    def favour(module, inputs, output):
        output = output.clone()
        output[..., ids[0]] += 100.0
        return output

    hook = model.get_output_embeddings().register_forward_hook(favour)
    try:
        ro = vlm.generate(model, proc, PROMPTS[:2], _images(2), max_new_tokens=4, group_size=2, seed=0)
        assert not torch.isin(ro.response_ids[ro.response_mask.bool()], torch.tensor(ids)).any()
        with torch.no_grad():
            lp = ro.logprobs_under(model)
        m = ro.response_mask.bool()
        assert torch.allclose(lp[m], ro.logprobs[m], atol=1e-4)
        with torch.no_grad():
            _, ent = ro.logprobs_under(model, return_entropy=True)
        assert torch.isfinite(ent).all()
    finally:
        hook.remove()


def test_rollout_logprobs_with_gradient_and_prompt_padding(qwen):
    """Prompts of different lengths (left padding shifts the 3-D positions) and the pass under grad."""
    model, proc = qwen
    prompts = ["How many?", "Are there more red shapes or blue shapes in the picture, red or blue?"]
    ro = vlm.generate(model, proc, prompts, _images(2, seed=1), max_new_tokens=5, group_size=3, seed=3)
    assert ro.attention_mask[:3, :ro.prompt_len].sum(-1).lt(ro.prompt_len).all()  # the short prompt is padded
    lp = ro.logprobs_under(model)
    m = ro.response_mask.bool()
    assert torch.allclose(lp[m].detach(), ro.logprobs[m], atol=1e-4)
    lp[m].sum().backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the vision tower gets gradient


def test_select_and_cat_keep_each_rows_image(llava):
    model, proc = llava
    ro = vlm.generate(model, proc, PROMPTS, _images(3, seed=2), max_new_tokens=5, group_size=2, seed=1)
    groups = ro.groups(2)
    assert all(isinstance(g, vlm.VLMRollout) for g in groups)
    back = vlm.VLMRollout.cat([groups[2], groups[0]]).select([3, 0, 2])
    assert back.pixel_inputs[0] is ro.pixel_inputs[1] and back.pixel_inputs[1] is ro.pixel_inputs[4]
    with torch.no_grad():
        lp = back.logprobs_under(model)
    m = back.response_mask.bool()
    assert torch.allclose(lp[m], back.logprobs[m], atol=1e-4)
    assert torch.allclose(back.logprobs[0, :back.response_mask[0].sum()],
                          ro.logprobs[1, :ro.response_mask[1].sum()])


def test_save_load_round_trip(llava, tmp_path):
    model, proc = llava
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert is_vision_language(tmp_path) and is_vision_language("embedded_vlm")
    m2, p2 = load_vlm(tmp_path)
    ro = vlm.generate(model, proc, PROMPTS[:1], _images(1), max_new_tokens=4, seed=0)
    ro2 = vlm.generate(m2, p2, PROMPTS[:1], _images(1), max_new_tokens=4, seed=0)
    assert torch.equal(ro.sequences, ro2.sequences) and torch.allclose(ro.logprobs, ro2.logprobs, atol=1e-6)


def test_text_checkpoint_is_not_vision_language(tmp_path):
    from pfkit.models import EMBEDDED

    assert not is_vision_language(EMBEDDED) and not is_vision_language(tmp_path)


def test_bad_inputs(llava):
    model, proc = llava
    with pytest.raises(ValueError, match="2 prompts but 1 images"):
        vlm.generate(model, proc, PROMPTS[:2], _images(1), max_new_tokens=2)
    with pytest.raises(TypeError, match="wrap it"):
        vlm.generate(model, proc, "one prompt", _images(1), max_new_tokens=2)


# ------------------------------------------------------------------------------------------ GRPO with images
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlm_run_files(tmp_path_factory):
    """A tiny random LLaVA + processor saved to tmp and a prompt file of the visual task (PNG paths)."""
    from pfkit.tasks import visual

    out = tmp_path_factory.mktemp("vlm_grpo")
    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS + ["0123456789 " * 5], vocab_size=300)
    model, proc = build_vlm(tok, width=32, layers=1, vision_width=16, vision_layers=1)
    model.save_pretrained(out / "pol")
    proc.save_pretrained(out / "pol")
    visual.write_prompt_file(visual.generate(16, seed=3, size=32), out / "data")
    return out


def _module(files, **kw):
    from pfkit.data.prompts import PromptDataModule
    from pfkit.modules.grpo import GRPOModule

    dm = PromptDataModule(task="file", prompts_file=str(files / "data" / "prompts.jsonl"),
                          verifier="_dist_helpers:digit_share", n_train=12, n_val=4)
    dm.setup()
    m = GRPOModule(policy=str(files / "pol"), sampler="vade", prompts_per_step=4, group_size=4, max_new_tokens=6,
                   lr=0.01, **kw).attach(dm.train_set, dm.val_set)
    return m, dm


def test_grpo_rollout_carries_the_prompt_images_into_the_loss(vlm_run_files, monkeypatch):
    import sys

    from pfkit.rl import grpo
    from pfkit.rollout.vlm import encode_prompts

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    sys.modules.pop("_dist_helpers", None)
    m, dm = _module(vlm_run_files)
    assert m.processor is not None and dm.train_set.images is not None
    ids = [3, 0]
    rewards, groups = m.rollout(ids)
    assert rewards.shape == (2, 4) and all(isinstance(g, vlm.VLMRollout) for g in groups)
    for i, g in zip(ids, groups):  # each group's pixel inputs are its own prompt's image
        _, (pix,) = encode_prompts(m.processor, [dm.train_set.prompts[i]], [dm.train_set.images[i]])
        assert all(torch.equal(p["pixel_values"], pix["pixel_values"]) for p in g.pixel_inputs)
    torch.manual_seed(0)
    res = grpo.step(m.model, m.configure_optimizers(), m.sampler, m.rollout, m.config, generator=m.gen)
    if res.stats["effective_samples"] > 0:  # images reached the loss: the vision tower got a gradient
        grads = [p.grad for n, p in m.model.named_parameters() if "vision_tower" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert res.stats["rollouts_spent"] == 16
    assert 0.0 <= m.evaluate(samples=2) <= 1.0


@pytest.mark.slow
def test_grpo_vade_ddp_with_image_prompts(vlm_run_files, tmp_path):
    """2 gloo processes, GRPO+VADE on image prompts, 2 steps: the tracker, selection, gradients and weights are
    identical on both ranks, each rank rolled out its share (with images), the checkpoint holds the VLM and reloads."""
    import yaml
    from test_distributed import dumps, pfkit_fit

    from pfkit.runs import RunDir

    files, out = vlm_run_files, tmp_path / "dump"
    cfg = yaml.safe_load((ROOT / "configs" / "grpo_codegen.yaml").read_text())
    cfg["model"]["init_args"].update({"policy": str(files / "pol"), "sampler": "vade", "prompts_per_step": 4,
                                      "group_size": 4, "max_new_tokens": 6, "lr": 0.01, "max_grad_norm": None})
    cfg["data"]["init_args"].update(task="file", prompts_file=str(files / "data" / "prompts.jsonl"),
                                    verifier="_dist_helpers:digit_share", n_train=12, n_val=4, steps_per_epoch=10)
    cfg["trainer"].update(max_steps=2, limit_val_batches=0, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": -1}},
        {"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(out)}}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    # LLaVA's vision tower has a parameter no forward uses (the pooled output's layer norm; features come
    # from the last hidden state), so plain DDP would never finish its gradient all-reduce: find them
    res = pfkit_fit(tmp_path / "c.yaml", tmp_path / "run", "--trainer.strategy", "ddp_find_unused_parameters_true",
                    "--trainer.devices", "2", "--trainer.accelerator", "cpu", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for step in (1, 2):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        ta, tb = a["sampler"]["tracker"], b["sampler"]["tracker"]
        for key in ("alpha", "beta", "last_seen", "visits"):
            assert torch.equal(ta[key], tb[key]), (step, key)
        assert a["batch"]["prompt_ids"] == b["batch"]["prompt_ids"]
        mine = [[j for j, p in enumerate(d["batch"]["payload"]) if p is not None] for d in (a, b)]
        assert mine == [[0, 2], [1, 3]]
        for d in (a, b):
            assert all(p["pixel_values"].shape == (1, 3, 32, 32) for g in d["batch"]["payload"] if g is not None
                       for p in g.pixel_inputs)
        for n, g in a["grads"].items():  # DDP all-reduced the gradient
            assert torch.equal(g, b["grads"][n]), (step, n)
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)
    rollouts = RunDir(tmp_path / "run").read("rollouts")
    assert len(rollouts) == 2 * 4 * 4 and rollouts["image"].str.endswith(".png").all()
    # the checkpoint holds the VLM: reloading it gives the trained weights
    from pfkit.modules.grpo import GRPOModule

    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    m = GRPOModule.load_from_checkpoint(ckpt, weights_only=False)
    assert m.processor is not None
    for n, w in m.model.named_parameters():
        assert torch.equal(w, dumps(out, 0, 2)["params"][n]), n


def _train_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_vlm", ROOT / "scripts" / "train_vlm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_success_summary_counts_prompts_by_successes():
    """The report's figures from per-prompt success rates: accuracy, never/always solved and one histogram
    bin per possible success count, overall and per kind (hand-computed)."""
    from types import SimpleNamespace as P

    probs = [P(kind="count", level=1), P(kind="count", level=2), P(kind="bar", level=1), P(kind="bar", level=1)]
    out = _train_script().summarise(probs, np.array([0.0, 0.5, 1.0, 0.25]), samples=4)
    assert out["accuracy"] == pytest.approx(0.4375) and out["n_prompts"] == 4
    assert out["frac_prompts_never"] == 0.25 and out["frac_prompts_always"] == 0.25
    assert out["success_histogram"] == {"0/4": 1, "1/4": 1, "2/4": 1, "3/4": 0, "4/4": 1}
    assert out["by_kind"]["count"]["success_histogram"] == {"0/4": 1, "1/4": 0, "2/4": 1, "3/4": 0, "4/4": 0}
    assert out["by_kind"]["bar"]["accuracy"] == pytest.approx(0.625)
    assert out["by_kind_level"] == {"bar/1": 0.625, "count/1": 0.0, "count/2": 0.5}


@pytest.mark.slow
def test_train_vlm_script_writes_a_loadable_policy_and_its_report(tmp_path):
    """`python scripts/train_vlm.py` (a few steps): the folder loads as a VLM and the report's histograms
    count every validation and held-out prompt once; --test_only recomputes the held-out block."""
    import json
    import subprocess
    import sys

    from pfkit.tasks import visual

    out = tmp_path / "vlm"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_vlm.py"), "--steps", "3", "--n_train", "64",
                          "--eval_samples", "2", "--out", str(out)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "train_report.json").read_text())
    sp = visual.splits(seed=0, n_train=1, n_val=120, n_test=240)
    assert report["steps"] == 3 and report["heldout_split"] == "test"
    assert report["n_eval"] == len(sp["test"]) * 2 and report["heldout"]["n_prompts"] == len(sp["test"])
    for block, split in ((report["heldout"], sp["test"]), (report["val"], sp["val"])):
        assert sum(block["success_histogram"].values()) == len(split) and 0.0 <= block["accuracy"] <= 1.0
        assert sum(b["n_prompts"] for b in block["by_kind"].values()) == len(split)
    model, proc = load_vlm(out)
    ro = vlm.generate(model, proc, ["How many red circles are there? Answer:"], _images(1, size=64), max_new_tokens=3,
                      seed=0)
    assert len(ro) == 1
    before = report["heldout"]
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_vlm.py"), "--test_only", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.loads((out / "train_report.json").read_text())
    assert again["heldout"]["n_prompts"] == before["n_prompts"] and again["steps"] == 3
    assert abs(again["heldout_accuracy"] - report["heldout_accuracy"]) <= 0.01  # same seed, same draws


def test_every_answer_of_the_visual_task_is_one_token_of_the_shipped_vlm():
    """Why position questions once scored 0: a 256-entry byte-level vocabulary (no merges) made "left" 5
    tokens + EOS, beyond the 4 new tokens sampled. Every answer is now one token, and the report's
    max_new_tokens (what GRPO configs use) fits the longest answer and its EOS."""
    import json

    import yaml

    from pfkit.models import EMBEDDED_VLM
    from pfkit.tasks import visual

    _, proc = load_vlm("embedded_vlm")
    report = json.loads((EMBEDDED_VLM / "train_report.json").read_text())
    answers = {p.answer for p in visual.generate(300, seed=9)}
    assert {"left", "right", "above", "below", "purple", "7"} <= answers
    lens = {a: len(proc.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in answers}
    assert set(lens.values()) == {1}, lens
    assert report["max_new_tokens"] == max(lens.values()) + 1
    cfg = yaml.safe_load((ROOT / "configs" / "grpo_visual.yaml").read_text())
    assert cfg["model"]["init_args"]["max_new_tokens"] >= report["max_new_tokens"]


def test_embedded_vlm_report_is_what_its_evaluation_gives():
    """The shipped VLM's held-out figures are recomputed here with the script's own evaluation (same split,
    seed and sampling) rather than trusted; accuracy in the 20-60% band GRPO needs, success spread over
    prompts (some never, most neither always nor never solved)."""
    import json

    from pfkit.models import EMBEDDED_VLM
    from pfkit.tasks import visual

    torch.set_num_threads(1)
    script = _train_script()
    report = json.loads((EMBEDDED_VLM / "train_report.json").read_text())
    model, proc = load_vlm("embedded_vlm")
    test = visual.splits(seed=0, n_train=1, n_val=120, n_test=240)["test"]
    S = report["eval_samples_per_prompt"]
    acc, per = script.evaluate(model, proc, test, S, seed=report["seed"] + 2, max_new_tokens=report["max_new_tokens"])
    got = script.summarise(test, per, S)
    assert abs(acc - report["heldout_accuracy"]) <= 0.01 and report["n_eval"] == len(test) * S
    assert 0.2 <= acc <= 0.6
    assert sum(abs(got["success_histogram"][k] - v) for k, v in report["heldout"]["success_histogram"].items()) <= 6
    mixed = 1 - got["frac_prompts_never"] - got["frac_prompts_always"]
    assert mixed >= 0.5, got
    assert all(b["accuracy"] > 0 for b in got["by_kind"].values()), got["by_kind"]


def test_embedded_vlm_loads_and_samples_the_visual_task():
    """The shipped VLM (scripts/train_vlm.py, seed 0) loads offline as a LLaVA and answers a visual problem
    in the task's vocabulary; its training report says what held-out accuracy it reached."""
    import json

    from pfkit.models import EMBEDDED_VLM
    from pfkit.tasks import visual

    model, proc = load_vlm("embedded_vlm")
    report = json.loads((EMBEDDED_VLM / "train_report.json").read_text())
    assert report["n_eval"] == report["heldout"]["n_prompts"] * report["eval_samples_per_prompt"]
    assert sum(report["heldout"]["success_histogram"].values()) == report["heldout"]["n_prompts"]
    p = visual.make_problem("count", 1, seed=5)
    ro = vlm.generate(model, proc, [p.question + " Answer:"], [p.image], max_new_tokens=4, temperature=0.0)
    assert ro.texts[0].strip() in {str(i) for i in range(1, 8)}  # a count, as trained
