"""The embedded code task: seeded HumanEval-shaped function-synthesis problems.

Each problem is a small function over a list of ints, a string or an int, built by composing 1-3 *steps*
(map/filter/sort/slice over lists, case/replace/word operations over strings, arithmetic and digit
operations over ints), optionally followed by a reduction (sum, count, max, ...). The docstring states the
steps in words and shows ``>>>`` examples; the hidden tests are a ``check(candidate)`` of asserts; the
reference completion is the function body, one line per step::

    def nums_scale_even_sum(nums: list[int]) -> int:
        \"\"\"Multiply each number by 3, then keep only the even numbers, then take the sum.

        >>> nums_scale_even_sum([1, 2, 3])
        6
        \"\"\"
        result = [x * 3 for x in nums]
        result = [x for x in result if x % 2 == 0]
        result = sum(result)
        return result

Why this shape: the step count sets the difficulty (a tiny policy gets one-step problems mostly right
and three-step ones mostly wrong), so per-problem success rates spread over 0..1, which is what PF-PPO's
filtering and VADE's prompt selection need. Problems are identified by *behaviour* (their outputs on a
fixed set of probe inputs), so two problems never compute the same function, and splits are disjoint by
problem, not just by text.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from pfkit.tasks import CodeProblem

# ------------------------------------------------------------------------------------------------ steps
WORDS = ("apple", "banana", "cat", "dog", "tree", "river", "stone", "light", "green", "moon", "sun", "sea",
         "bird", "fish", "road", "rain", "snow", "star", "note", "table", "Hello", "World", "Alice", "Bob")
CHARS = ("a", "e", "o", "t", "s", "n", "r", "l")


@dataclass(frozen=True)
class Step:
    """One operation. ``src``/``dst``: value types ('list', 'str', 'int'); ``phrase``/``code`` are format
    strings over ``{v}`` (the input variable) and the parameters ``{k}`` or ``{a}``/``{b}``."""

    key: str
    src: str
    dst: str
    phrase: str
    code: str
    params: tuple = ()  # values for k, or (a, b) pairs for steps with two character parameters

    def choose(self, rng: random.Random) -> dict:
        if not self.params:
            return {}
        p = rng.choice(self.params)
        return {"a": p[0], "b": p[1]} if isinstance(p, tuple) else {"k": p}

    def render(self, var: str, args: dict) -> tuple[str, str]:
        return self.phrase.format(**args), self.code.format(v=var, **args)


def _pairs():
    return tuple((a, b) for a in CHARS for b in CHARS if a != b)


STEPS: tuple[Step, ...] = (
    # list -> list: maps
    Step("scale", "list", "list", "multiply each number by {k}", "[x * {k} for x in {v}]", tuple(range(2, 10))),
    Step("add", "list", "list", "add {k} to each number", "[x + {k} for x in {v}]", tuple(range(1, 10))),
    Step("sub", "list", "list", "subtract {k} from each number", "[x - {k} for x in {v}]", tuple(range(1, 10))),
    Step("square", "list", "list", "square each number", "[x * x for x in {v}]"),
    Step("abs", "list", "list", "take the absolute value of each number", "[abs(x) for x in {v}]"),
    Step("mod", "list", "list", "replace each number by its remainder modulo {k}", "[x % {k} for x in {v}]",
         tuple(range(2, 10))),
    # list -> list: filters
    Step("even", "list", "list", "keep only the even numbers", "[x for x in {v} if x % 2 == 0]"),
    Step("odd", "list", "list", "keep only the odd numbers", "[x for x in {v} if x % 2 == 1]"),
    Step("above", "list", "list", "keep only the numbers greater than {k}", "[x for x in {v} if x > {k}]",
         tuple(range(-3, 10))),
    Step("below", "list", "list", "keep only the numbers less than {k}", "[x for x in {v} if x < {k}]",
         tuple(range(-3, 10))),
    Step("multiple", "list", "list", "keep only the multiples of {k}", "[x for x in {v} if x % {k} == 0]",
         tuple(range(3, 10))),
    Step("drop", "list", "list", "remove every {k}", "[x for x in {v} if x != {k}]", tuple(range(-3, 10))),
    # list -> list: order and slices
    Step("sort", "list", "list", "sort the numbers in increasing order", "sorted({v})"),
    Step("sortdesc", "list", "list", "sort the numbers in decreasing order", "sorted({v}, reverse=True)"),
    Step("reverse", "list", "list", "reverse the order of the numbers", "{v}[::-1]"),
    Step("head", "list", "list", "keep the first {k} numbers", "{v}[:{k}]", tuple(range(1, 6))),
    Step("tail", "list", "list", "drop the first {k} numbers", "{v}[{k}:]", tuple(range(1, 6))),
    Step("unique", "list", "list", "remove repeated numbers, keeping the first of each",
         "list(dict.fromkeys({v}))"),
    # list -> int: reductions
    Step("sum", "list", "int", "take the sum", "sum({v})"),
    Step("count", "list", "int", "count the numbers", "len({v})"),
    Step("max", "list", "int", "take the largest number (0 if there is none)", "max({v}, default=0)"),
    Step("min", "list", "int", "take the smallest number (0 if there is none)", "min({v}, default=0)"),
    Step("first", "list", "int", "take the first number (0 if there is none)", "{v}[0] if {v} else 0"),
    # str -> str
    Step("upper", "str", "str", "convert the text to upper case", "{v}.upper()"),
    Step("lower", "str", "str", "convert the text to lower case", "{v}.lower()"),
    Step("swapcase", "str", "str", "swap the case of every letter", "{v}.swapcase()"),
    Step("reversed", "str", "str", "reverse the text", "{v}[::-1]"),
    Step("novowels", "str", "str", "remove the vowels", "\"\".join(c for c in {v} if c.lower() not in \"aeiou\")"),
    Step("replace", "str", "str", "replace every '{a}' with '{b}'", "{v}.replace(\"{a}\", \"{b}\")", _pairs()),
    Step("delete", "str", "str", "remove every '{k}'", "{v}.replace(\"{k}\", \"\")", CHARS),
    Step("double", "str", "str", "repeat each character twice", "\"\".join(c * 2 for c in {v})"),
    Step("wordrev", "str", "str", "reverse the order of the words", "\" \".join({v}.split()[::-1])"),
    Step("wordsort", "str", "str", "sort the words alphabetically", "\" \".join(sorted({v}.split()))"),
    Step("title", "str", "str", "capitalize each word", "\" \".join(w.capitalize() for w in {v}.split())"),
    Step("prefix", "str", "str", "keep the first {k} characters", "{v}[:{k}]", tuple(range(1, 8))),
    Step("repeat", "str", "str", "repeat the text {k} times", "{v} * {k}", (2, 3)),
    # str -> int
    Step("length", "str", "int", "take the length", "len({v})"),
    Step("countchar", "str", "int", "count the '{k}' characters", "{v}.count(\"{k}\")", CHARS),
    Step("vowels", "str", "int", "count the vowels", "sum(1 for c in {v} if c.lower() in \"aeiou\")"),
    Step("words", "str", "int", "count the words", "len({v}.split())"),
    # int -> int
    Step("times", "int", "int", "multiply by {k}", "{v} * {k}", tuple(range(2, 10))),
    Step("plus", "int", "int", "add {k}", "{v} + {k}", tuple(range(1, 10))),
    Step("minus", "int", "int", "subtract {k}", "{v} - {k}", tuple(range(1, 10))),
    Step("modulo", "int", "int", "take the remainder modulo {k}", "{v} % {k}", tuple(range(2, 10))),
    Step("halve", "int", "int", "divide by 2, rounding down", "{v} // 2"),
    Step("sq", "int", "int", "square it", "{v} * {v}"),
    Step("absolute", "int", "int", "take the absolute value", "abs({v})"),
    Step("digitsum", "int", "int", "take the sum of its digits (ignoring the sign)",
         "sum(int(d) for d in str(abs({v})))"),
)
STEP_BY_KEY = {s.key: s for s in STEPS}

ARG = {"list": ("nums", "list[int]", "Given a list of integers"),
       "str": ("text", "str", "Given a string"),
       "int": ("n", "int", "Given an integer")}
NAME_PREFIX = {"list": "nums", "str": "text", "int": "num"}
FAMILY_WEIGHTS = {"list": 0.5, "str": 0.35, "int": 0.15}
DEPTH_WEIGHTS = {1: 0.25, 2: 0.4, 3: 0.35}


# ------------------------------------------------------------------------------------------------ inputs
def _random_input(kind: str, rng: random.Random):
    if kind == "list":
        return [rng.randint(-5, 12) for _ in range(rng.randint(0, 7))]
    if kind == "str":
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
        return " ".join(words)
    return rng.randint(-50, 200)


@functools.cache  # the same for every call: rebuilding it per candidate was a third of generate()'s time
def _probe_inputs(kind: str) -> tuple:
    """Fixed inputs whose outputs identify a function (the same for every seed). Callers pass copies of list
    inputs to candidate functions, so the cached values are never mutated."""
    rng = random.Random(f"probe-{kind}")
    edge = {"list": [[], [0], [3, 3, -2, 7, 7, 10]], "str": ["a", "Hello World", "sea star"], "int": [0, -7, 123]}
    return tuple(edge[kind] + [_random_input(kind, rng) for _ in range(29)])


# ------------------------------------------------------------------------------------------------ problems
@dataclass(frozen=True)
class Spec:
    """A composition of steps with their parameters: the identity of a problem's *code*."""

    family: str
    steps: tuple  # ((key, ((name, value), ...)), ...)

    @property
    def depth(self) -> int:
        return len(self.steps)

    def rendered(self, var: str = "result") -> list[tuple[str, str]]:
        out, cur = [], ARG[self.family][0]
        for key, args in self.steps:
            out.append(STEP_BY_KEY[key].render(cur, dict(args)))
            cur = var
        return out

    @property
    def out_type(self) -> str:
        return STEP_BY_KEY[self.steps[-1][0]].dst

    def name(self) -> str:
        return "_".join([NAME_PREFIX[self.family]] + [k for k, _ in self.steps])

    def body(self) -> str:
        lines = [f"    result = {code}\n" for _, code in self.rendered()]
        return "".join(lines) + "    return result\n"

    def function(self):
        """The reference as a Python callable (our own trusted code; used to compute examples and tests)."""
        ns: dict = {}
        exec(self.signature() + "\n" + self.body(), ns)  # noqa: S102 -- generator-authored code only
        return ns[self.name()]

    def signature(self) -> str:
        arg, ann, _ = ARG[self.family]
        ret = {"list": "list[int]", "str": "str", "int": "int"}[self.out_type]
        return f"def {self.name()}({arg}: {ann}) -> {ret}:"

    def description(self) -> str:
        phrases = [p for p, _ in self.rendered()]
        text = ", then ".join(phrases)
        return f"{ARG[self.family][2]}, {text}."


def _sample_spec(rng: random.Random, family: str, depth: int) -> Spec | None:
    steps, cur = [], family
    for i in range(depth):
        last = i == depth - 1
        options = [s for s in STEPS if s.src == cur]
        if not last:  # keep a list/str chain alive until the last step so all depths are reachable
            options = [s for s in options if s.dst == cur] or options
        if steps:
            options = [s for s in options if s.key != steps[-1][0]]
        step = rng.choice(options)
        steps.append((step.key, tuple(sorted(step.choose(rng).items()))))
        cur = step.dst
    return Spec(family, tuple(steps))


def _outputs(fn, inputs) -> tuple | None:
    try:
        return tuple(repr(fn(x if not isinstance(x, list) else list(x))) for x in inputs)
    except Exception:  # noqa: BLE001 -- a composition that crashes on some input is simply not used
        return None


def _fingerprint(spec: Spec) -> str | None:
    """Hash of the outputs on the probe inputs; None for degenerate functions (crash, constant, identity)."""
    probes = _probe_inputs(spec.family)
    outs = _outputs(spec.function(), probes)
    if outs is None or len(set(outs)) <= 2:
        return None
    if outs == tuple(repr(x) for x in probes):  # identity (e.g. sort then reverse then sort)
        return None
    if any(len(o) > 60 for o in outs):  # keep examples short enough for a small context
        return None
    return hashlib.sha1(repr((spec.family, spec.out_type, outs)).encode()).hexdigest()[:16]


def _make_problem(spec: Spec, fp: str, index: int, rng: random.Random) -> CodeProblem | None:
    fn, name = spec.function(), spec.name()
    # examples: distinct inputs with non-trivial outputs where possible; tests add edge cases + more inputs
    pool = [_random_input(spec.family, rng) for _ in range(40)]
    pool = list({repr(x): x for x in pool}.values())
    results = [(x, fn(list(x) if isinstance(x, list) else x)) for x in pool]
    informative = [r for r in results if r[1] not in ([], "", 0)] or results
    examples = informative[:2]
    edge = {"list": [[], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], "str": ["", "Hello World"], "int": [0, 7]}[spec.family]
    tests = examples + [(x, fn(list(x) if isinstance(x, list) else x)) for x in edge]
    tests += [r for r in results if r not in tests][:6]
    if len({repr(o) for _, o in tests}) < 2:
        return None
    doc = [f'    """{spec.description()}', ""]
    for x, y in examples:
        doc += [f"    >>> {name}({x!r})", f"    {y!r}"]
    doc.append('    """')
    prompt = spec.signature() + "\n" + "\n".join(doc) + "\n"
    check = ["def check(candidate):"] + [f"    assert candidate({x!r}) == {y!r}" for x, y in tests]
    return CodeProblem(
        task_id=f"codegen/{index}",
        prompt=prompt,
        tests="\n".join(check) + "\n",
        entry_point=name,
        reference=spec.body(),
        meta={"family": spec.family, "depth": spec.depth, "steps": [list(s) for s in spec.steps],
              "fingerprint": fp},
    )


def _weighted(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def generate(n: int, seed: int = 0, *, exclude: set[str] | None = None) -> list[CodeProblem]:
    """``n`` distinct problems, the same for the same ``seed``.

    Distinct means different behaviour on the probe inputs (``meta['fingerprint']``); pass the fingerprints
    of other problems in ``exclude`` to keep them out. The depth mix (1-3 steps) follows ``DEPTH_WEIGHTS``
    until the small space of one-step functions runs out, after which deeper problems fill in.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"codegen-{seed}")
    seen = set(exclude or ())
    problems: list[CodeProblem] = []
    misses = 0
    while len(problems) < n:
        family, depth = _weighted(rng, FAMILY_WEIGHTS), _weighted(rng, DEPTH_WEIGHTS)
        spec = _sample_spec(rng, family, depth)
        fp = _fingerprint(spec)
        if fp is None or fp in seen:
            misses += 1
            if misses > 200 * (n + 10):
                raise RuntimeError(f"could not find {n} distinct problems (found {len(problems)})")
            continue
        p = _make_problem(spec, fp, len(problems), rng)
        if p is None:
            continue
        seen.add(fp)
        problems.append(p)
    return problems


def splits(seed: int = 0, *, n_train: int = 3000, n_val: int = 64, n_test: int = 256) -> dict[str, list[CodeProblem]]:
    """Train/val/test problems, disjoint by problem (no function appears in two splits).

    Held-out splits are drawn first so they get the full depth mix; task ids are prefixed by the split
    (``codegen/test/17``) so they stay unique when splits are mixed. Generating them takes seconds, and
    every module, demo and test asks for them, so they are built once per process (the problems are frozen;
    each call gets its own lists).
    """
    return {k: list(v) for k, v in _splits(seed, n_train, n_val, n_test).items()}


@functools.lru_cache(maxsize=8)
def _splits(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, tuple[CodeProblem, ...]]:
    pool = generate(n_test + n_val + n_train, seed)
    cut = {"test": pool[:n_test], "val": pool[n_test:n_test + n_val], "train": pool[n_test + n_val:]}
    out = {}
    for name, probs in cut.items():
        out[name] = [CodeProblem(f"codegen/{name}/{i}", p.prompt, p.tests, p.entry_point, p.reference, p.meta)
                     for i, p in enumerate(probs)]
    return {k: tuple(out[k]) for k in ("train", "val", "test")}


def extra_split(name: str, n: int, seed: int = 0, exclude: dict[str, int] | None = None) -> list[CodeProblem]:
    """``n`` more problems, behaviourally disjoint from every problem of ``splits(seed)`` (and from each other).

    For what the fixed splits are too small for: a study's large held-out evaluation set, more reward-model
    prompts. The same ``name`` gives the same problems; ids are ``codegen/<name>/<i>``. The one-step functions
    are mostly taken by the fixed splits, so these problems are deeper on average (``meta['steps']``).
    Two names are drawn independently and CAN share problems (``rm_synthetic`` 4000 and ``study_eval`` 1024
    share ~30%): ``exclude`` ({name: n} of other extra splits) keeps this one disjoint from those too.
    """
    if name in ("train", "val", "test"):
        raise ValueError(f"{name!r} is a fixed split; use splits() for it")
    taken = {p.meta["fingerprint"] for ps in _splits(seed, 3000, 64, 256).values() for p in ps}
    for other, size in sorted((exclude or {}).items()):
        if other == name:
            raise ValueError(f"extra split {name!r} cannot exclude itself")
        taken |= {p.meta["fingerprint"] for p in extra_split(other, size, seed)}
    return [CodeProblem(f"codegen/{name}/{i}", p.prompt, p.tests, p.entry_point, p.reference, p.meta)
            for i, p in enumerate(_extra(name, n, seed, frozenset(taken)))]


@functools.lru_cache(maxsize=8)
def _extra(name: str, n: int, seed: int, taken: frozenset) -> tuple[CodeProblem, ...]:
    return tuple(generate(n, f"{seed}-{name}", exclude=set(taken)))


def spec_of(problem: CodeProblem) -> Spec:
    """The step composition behind a generated problem."""
    return Spec(problem.meta["family"], tuple((k, tuple(tuple(a) for a in args)) for k, args in problem.meta["steps"]))


def wrong_completion(problem: CodeProblem, rng: random.Random, tries: int = 50) -> str | None:
    """A plausible but wrong body: one step swapped for another of the same type, or a parameter changed.

    Checked against the problem's test inputs by running it in process (generator-authored code only), so
    the result is guaranteed to fail ``check``. None if no such variant was found.
    """
    spec = spec_of(problem)
    probes = _probe_inputs(spec.family)
    target = _outputs(spec.function(), probes)
    for _ in range(tries):
        steps = list(spec.steps)
        i = rng.randrange(len(steps))
        key, args = steps[i]
        cur = STEP_BY_KEY[key]
        if args and rng.random() < 0.5:
            new = cur.choose(rng)
            steps[i] = (key, tuple(sorted(new.items())))
        else:
            alt = [s for s in STEPS if s.src == cur.src and s.dst == cur.dst and s.key != key]
            s = rng.choice(alt)
            steps[i] = (s.key, tuple(sorted(s.choose(rng).items())))
        variant = Spec(spec.family, tuple(steps))
        outs = _outputs(variant.function(), probes)
        if outs is not None and outs != target and _fails_tests(variant, problem):
            return variant.body()
    return None


def _fails_tests(variant: Spec, problem: CodeProblem) -> bool:
    ns: dict = {}
    try:
        exec(problem.prompt + variant.body() + "\n" + problem.tests, ns)  # noqa: S102 -- our own code
        ns["check"](ns[problem.entry_point])
    except Exception:  # noqa: BLE001
        return True
    return False
