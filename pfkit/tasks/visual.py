"""The embedded multimodal task: generated images with questions whose answers are exact.

Five kinds of question, each at three difficulty levels (more objects, smaller objects, more distractors,
closer values), so per-prompt success rates of a small vision-language policy spread over 0..1:

* ``count``     "How many red circles are there?"                 -> "3"
* ``colour``    "What colour is the triangle?"                    -> "blue"
* ``position``  "Is the red square left or right of the blue circle?" -> "left" (level 3: above/below)
* ``compare``   "Are there more red shapes or blue shapes?"       -> "red" (never a tie)
* ``bar``       a bar chart: "Which bar is the tallest? Count from the left." -> "2";
                level 3: "How tall is the tallest bar, in grid lines?" -> "5"

Images are drawn with Pillow without anti-aliasing (every pixel is the background, an object colour or
the chart's grey), objects never touch, and everything is a function of ``seed``: no download, the same
bytes on every machine. Answers are single words or integers, checked by the ``exact`` verifier.
:func:`write_prompt_file` writes PNGs + a JSONL that ``PromptDataModule(task="file", verifier="exact")``
reads, so the own-data path and the embedded task are one path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (150, 60, 190)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("count", "colour", "position", "compare", "bar")
LEVELS = (1, 2, 3)
BACKGROUND = (255, 255, 255)
GRID = (200, 200, 200)   # bar-chart grid lines
AXIS = (0, 0, 0)


@dataclass(frozen=True)
class VisualProblem:
    """One image + question + exact answer. ``objects`` is the ground truth the answer was computed from:
    ``(shape, colour, cx, cy, radius)`` per object, or per bar ``("bar", colour, x0, x1, height_units)``."""

    task_id: str
    image: np.ndarray = field(repr=False, compare=False)     # uint8 [H, W, 3]
    question: str
    answer: str
    kind: str
    level: int
    objects: tuple = field(default=(), repr=False)

    @property
    def prompt(self) -> str:
        return self.question


def _draw(size: int, objects: list[tuple]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(im)
    for shape, colour, cx, cy, r in objects:
        c = COLOURS[colour]
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            d.ellipse(box, fill=c)
        elif shape == "square":
            d.rectangle(box, fill=c)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    return np.asarray(im, dtype=np.uint8).copy()


def _place(rng: random.Random, size: int, specs: list[tuple[str, str]], radius: int) -> list[tuple] | None:
    """Non-touching positions for (shape, colour) specs: rejection sampling, gap >= 2 px between boxes."""
    placed: list[tuple] = []
    for shape, colour in specs:
        for _ in range(200):
            cx, cy = rng.randint(radius + 1, size - radius - 2), rng.randint(radius + 1, size - radius - 2)
            if all(max(abs(cx - x), abs(cy - y)) > 2 * radius + 2 for _, _, x, y, _ in placed):
                placed.append((shape, colour, cx, cy, radius))
                break
        else:
            return None
    return placed


_RADIUS = {1: 6, 2: 5, 3: 4}        # object half-size at 64 px, scaled with the image
_MAX_OBJECTS = {1: 4, 2: 7, 3: 10}


def _scene(kind: str, level: int, rng: random.Random, size: int) -> tuple[str, str, list[tuple]]:
    r = max(2, round(_RADIUS[level] * size / 64))
    colours, shapes = list(COLOURS), list(SHAPES)
    while True:
        if kind == "count":
            shape, colour = rng.choice(shapes), rng.choice(colours)
            n = rng.randint(1, {1: 3, 2: 5, 3: 7}[level])
            specs = [(shape, colour)] * n
            n_distract = {1: 0, 2: rng.randint(1, 2), 3: rng.randint(2, 3)}[level]
            for _ in range(n_distract):  # level 2: other colour, same shape; level 3: anything else
                s = shape if level == 2 else rng.choice(shapes)
                c = rng.choice([x for x in colours if x != colour]) if s == shape else rng.choice(colours)
                specs.append((s, c))
            q, a = f"How many {colour} {shape}s are there?", str(n)
        elif kind == "colour":
            shape, colour = rng.choice(shapes), rng.choice(colours)
            others = [s for s in shapes if s != shape]
            specs = [(shape, colour)] + [(rng.choice(others), rng.choice(colours))
                                         for _ in range({1: 0, 2: 2, 3: 4}[level])]
            q, a = f"What colour is the {shape}?", colour
        elif kind == "position":
            (s1, c1), (s2, c2) = [(rng.choice(shapes), c) for c in rng.sample(colours, 2)]
            rest = [c for c in colours if c not in (c1, c2)]
            specs = [(s1, c1), (s2, c2)] + [(rng.choice(shapes), rng.choice(rest))
                                            for _ in range({1: 0, 2: 2, 3: 3}[level])]
            axis = "y" if level == 3 else "x"
            q = (f"Is the {c1} {s1} above or below the {c2} {s2}?" if axis == "y" else
                 f"Is the {c1} {s1} left or right of the {c2} {s2}?")
            a = None  # from the placement
        elif kind == "compare":
            c1, c2 = rng.sample(colours, 2)
            hi = {1: 5, 2: 6, 3: 7}[level]
            n1 = rng.randint(1, hi)
            gap = {1: rng.randint(2, 3), 2: rng.randint(1, 2), 3: 1}[level]
            n2 = n1 + gap if rng.random() < 0.5 or n1 - gap < 1 else n1 - gap
            if n1 + n2 > _MAX_OBJECTS[level] + 2:
                continue
            specs = [(rng.choice(shapes), c1) for _ in range(n1)] + [(rng.choice(shapes), c2) for _ in range(n2)]
            rng.shuffle(specs)
            q, a = f"Are there more {c1} shapes or {c2} shapes?", c1 if n1 > n2 else c2
        else:
            return _bar_scene(level, rng, size)
        objects = _place(rng, size, specs, r)
        if objects is None:
            continue
        if kind == "position":
            (_, _, x1, y1, _), (_, _, x2, y2, _) = objects[:2]
            d = (y1 - y2) if level == 3 else (x1 - x2)
            if abs(d) < 2 * r + 3:  # too close to call by eye: redraw
                continue
            a = ("above" if d < 0 else "below") if level == 3 else ("left" if d < 0 else "right")
        order = list(range(len(objects)))
        rng.shuffle(order)  # the target is not always drawn first
        return q, a, [objects[i] for i in order]


def _bar_scene(level: int, rng: random.Random, size: int) -> tuple[str, str, list[tuple]]:
    n_bars = {1: 3, 2: 5, 3: 5}[level]
    units = 8
    while True:
        heights = [rng.randint(1, units) for _ in range(n_bars)]
        top = max(heights)
        second = sorted(heights)[-2]
        if heights.count(top) == 1 and top - second >= {1: 3, 2: 1, 3: 1}[level]:
            break
    colour = rng.choice(list(COLOURS))
    left, width = 4, (size - 8) // n_bars
    bars = [("bar", colour, left + i * width + 1, left + (i + 1) * width - 2, h) for i, h in enumerate(heights)]
    if level == 3:
        q, a = "How tall is the tallest bar, in grid lines?", str(top)
    else:
        q, a = "Which bar is the tallest? Count from the left.", str(heights.index(top) + 1)
    return q, a, bars


def bar_geometry(size: int, units: int = 8) -> tuple[int, float]:
    """(baseline row, pixels per unit) of a bar chart of this size."""
    base = size - 4
    return base, (base - 4) / units


def _draw_bars(size: int, bars: list[tuple], grid: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(im)
    base, px = bar_geometry(size)
    if grid:
        for u in range(1, 9):
            y = round(base - u * px)
            d.line([(2, y), (size - 3, y)], fill=GRID)
    for _, colour, x0, x1, h in bars:
        d.rectangle([x0, round(base - h * px), x1, base - 1], fill=COLOURS[colour])
    d.line([(2, base), (size - 3, base)], fill=AXIS)
    return np.asarray(im, dtype=np.uint8).copy()


def make_problem(kind: str, level: int, seed: int, size: int = 64, task_id: str | None = None) -> VisualProblem:
    """One problem of ``kind`` at ``level``; a function of (kind, level, seed, size) only."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if level not in LEVELS:
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px so the smallest objects stay visible, got {size}")
    rng = random.Random(f"visual-{kind}-{level}-{seed}-{size}")
    q, a, objects = _scene(kind, level, rng, size)
    image = _draw_bars(size, objects, grid=level == 3) if kind == "bar" else _draw(size, objects)
    return VisualProblem(task_id or f"visual/{kind}/{level}/{seed}", image, q, a, kind, level, tuple(objects))


def generate(n: int, seed: int = 0, *, kinds=KINDS, levels=LEVELS, size: int = 64) -> list[VisualProblem]:
    """``n`` problems cycling over ``kinds`` x ``levels``, problem ``i`` drawn from seed ``(seed, i)``."""
    combos = [(k, lv) for lv in levels for k in kinds]
    return [make_problem(k, lv, seed * 1_000_003 + i, size, task_id=f"visual/{seed}/{i}")
            for i, (k, lv) in ((i, combos[i % len(combos)]) for i in range(n))]


def splits(seed: int = 0, n_train: int = 600, n_val: int = 120, n_test: int = 240, size: int = 64) -> dict:
    """Disjoint train/val/test problems (different seed streams, so no image repeats across splits)."""
    return {name: generate(n, seed=seed * 10 + k, size=size)
            for k, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)), start=1)}


def write_prompt_file(problems, folder: str | Path, name: str = "prompts.jsonl") -> Path:
    """PNG per problem + a JSONL (``id, prompt, answer, image, kind, level``; image paths relative to it)."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w") as f:
        for i, p in enumerate(problems):
            rel = f"images/{i:05d}.png"
            Image.fromarray(p.image).save(folder / rel)
            f.write(json.dumps({"id": p.task_id, "prompt": p.question, "answer": p.answer, "image": rel,
                                "kind": p.kind, "level": p.level}) + "\n")
    return path
