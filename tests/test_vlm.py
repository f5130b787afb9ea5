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
        lp = vlm.rollout_logprobs(model, ro)
    m = ro.response_mask.bool()
    assert torch.allclose(lp[m], ro.logprobs[m], atol=1e-4), (lp[m] - ro.logprobs[m]).abs().max()
    assert (lp[~m] == 0).all()
    # the image is used: another image gives other log-probs for the same tokens
    other = [dict(p, pixel_values=p["pixel_values"].flip(-1)) if p is not None else None for p in ro.pixel_inputs]
    with torch.no_grad():
        lp2 = vlm.sequence_logprobs(model, ro.sequences, ro.attention_mask, ro.response_len, other)
    rows = torch.tensor([p is not None for p in ro.pixel_inputs])
    assert (lp2[rows] - lp[rows]).abs().max() > 1e-3
    # same seed, same tokens
    ro2 = vlm.generate(model, proc, PROMPTS, images, max_new_tokens=6, group_size=2, seed=0, min_new_tokens=3)
    assert torch.equal(ro.sequences, ro2.sequences)


def test_rollout_logprobs_with_gradient_and_prompt_padding(qwen):
    """Prompts of different lengths (left padding shifts the 3-D positions) and the pass under grad."""
    model, proc = qwen
    prompts = ["How many?", "Are there more red shapes or blue shapes in the picture, red or blue?"]
    ro = vlm.generate(model, proc, prompts, _images(2, seed=1), max_new_tokens=5, group_size=3, seed=3)
    assert ro.attention_mask[:3, :ro.prompt_len].sum(-1).lt(ro.prompt_len).all()  # the short prompt is padded
    lp = vlm.rollout_logprobs(model, ro)
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
        lp = vlm.rollout_logprobs(model, back)
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
