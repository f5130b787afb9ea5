"""The embedded multimodal task: every answer re-derived from the image's pixels (not from the generator's
ground truth), determinism by seed, difficulty levels, and the prompt file GRPO's datamodule reads."""

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from pfkit.tasks import visual
from pfkit.tasks.visual import COLOURS

PROBLEMS = visual.generate(300, seed=0)   # 20 of each (kind, level)


def components(image: np.ndarray) -> list[tuple[str, str, float, float]]:
    """(colour, shape, centre x, centre y) of each same-colour blob; shape from how much of its bounding
    box it fills: square 1, circle ~pi/4, triangle ~1/2."""
    out = []
    for name, rgb in COLOURS.items():
        lab, n = ndimage.label(np.all(image == rgb, axis=-1))
        for k in range(1, n + 1):
            ys, xs = np.nonzero(lab == k)
            fill = len(xs) / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
            shape = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
            out.append((name, shape, xs.mean(), ys.mean()))
    return out


def by(kind, level=None):
    return [p for p in PROBLEMS if p.kind == kind and (level is None or p.level == level)]


def test_count_answers_from_pixels():
    for p in by("count"):
        colour, shape = p.question.split()[2], p.question.split()[3][:-1]
        blobs = components(p.image)
        assert str(sum(c == colour and s == shape for c, s, _, _ in blobs)) == p.answer, p.task_id
        assert len(blobs) == len(p.objects)  # objects never touch: one blob each


def test_colour_answers_from_pixels():
    for p in by("colour"):
        shape = p.question.split()[-1][:-1]
        hits = [c for c, s, _, _ in components(p.image) if s == shape]
        assert hits == [p.answer], p.task_id


def test_position_answers_from_pixels():
    for p in by("position"):
        w = p.question.replace("?", "").split()
        (c1, s1), (c2, s2) = (w[2], w[3]), (w[-2], w[-1])
        blobs = components(p.image)
        (x1, y1), = [(x, y) for c, s, x, y in blobs if (c, s) == (c1, s1)]
        (x2, y2), = [(x, y) for c, s, x, y in blobs if (c, s) == (c2, s2)]
        want = ("above" if y1 < y2 else "below") if "above" in p.question else ("left" if x1 < x2 else "right")
        assert p.answer == want and ("above" in p.question) == (p.level == 3), p.task_id


def test_compare_answers_from_pixels():
    for p in by("compare"):
        c1, c2 = p.question.split()[3], p.question.split()[6]
        n = Counter(c for c, _, _, _ in components(p.image))
        assert n[c1] != n[c2] and p.answer == (c1 if n[c1] > n[c2] else c2), p.task_id


def test_bar_answers_from_pixels():
    for p in by("bar"):
        size = p.image.shape[0]
        base, px = visual.bar_geometry(size)
        colour = p.objects[0][1]
        mask = np.all(p.image == COLOURS[colour], axis=-1)
        cols = np.nonzero(mask.any(axis=0))[0]
        runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)  # one run of columns per bar
        heights = [round(mask[:, r[len(r) // 2]].sum() / px) for r in runs]
        assert len(heights) == {1: 3, 2: 5, 3: 5}[p.level]
        tallest = int(np.argmax(heights))
        assert heights.count(max(heights)) == 1
        assert p.answer == (str(max(heights)) if p.level == 3 else str(tallest + 1)), (p.task_id, heights)
        # level 3 has grid lines to read the height off; levels 1-2 do not
        assert (np.all(p.image == visual.GRID, axis=-1).any()) == (p.level == 3)


def test_deterministic_by_seed_and_splits_disjoint():
    a, b = visual.generate(15, seed=3), visual.generate(15, seed=3)
    assert all(np.array_equal(x.image, y.image) and (x.question, x.answer) == (y.question, y.answer)
               for x, y in zip(a, b))
    c = visual.generate(15, seed=4)
    assert sum(np.array_equal(x.image, y.image) for x, y in zip(a, c)) == 0
    sp = visual.splits(seed=0, n_train=45, n_val=15, n_test=15)
    keys = {k: {p.image.tobytes() for p in v} for k, v in sp.items()}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])
    with pytest.raises(ValueError, match="kind must be one of"):
        visual.make_problem("shade", 1, 0)


def test_levels_get_harder_and_answers_spread():
    n_objects = {lv: np.mean([len(p.objects) for p in PROBLEMS if p.kind != "bar" and p.level == lv]) for lv in (1, 2, 3)}
    assert n_objects[1] < n_objects[2] < n_objects[3]
    radius = {lv: {p.objects[0][4] for p in PROBLEMS if p.kind != "bar" and p.level == lv} for lv in (1, 2, 3)}
    assert radius == {1: {6}, 2: {5}, 3: {4}}
    gaps = {lv: np.mean([abs(int(a) - int(b)) for p in by("compare", lv)
                         for a, b in [Counter(c for c, _, _, _ in components(p.image)).values()]]) for lv in (1, 2, 3)}
    assert gaps[1] > gaps[2] > gaps[3] == 1
    counts = {int(p.answer) for p in by("count")}
    assert counts <= set(range(1, 8)) and len(counts) >= 5 and max(int(p.answer) for p in by("count", 1)) <= 3
    assert len({p.answer for p in by("colour")}) == len(COLOURS)
    assert Counter(p.answer for p in by("position", 1) + by("position", 2)).keys() == {"left", "right"}


def test_prompt_file_feeds_the_own_data_datamodule(tmp_path):
    from PIL import Image

    from pfkit.data.prompts import PromptDataModule

    probs = visual.generate(10, seed=1, size=48)
    path = visual.write_prompt_file(probs, tmp_path)
    dm = PromptDataModule(task="file", prompts_file=str(path), verifier="exact", n_val=2, n_train=8)
    dm.setup()
    ps = dm.val_set
    assert ps.ids == [p.task_id for p in probs[-2:]] and ps.prompts == [p.question for p in probs[-2:]]
    assert np.array_equal(np.asarray(Image.open(ps.images[0]).convert("RGB")), probs[-2].image)
    assert ps.score([0, 0], [f"Answer: {probs[-2].answer}", "Answer: nothing"]) == [1.0, 0.0]
