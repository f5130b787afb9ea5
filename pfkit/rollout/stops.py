"""Stop strings: where a response ends in its decoded text.

``find_stop`` searches plain strings with ``str.find`` and compiled patterns (``DEDENT``) with ``re``; that
was measured faster than decoding-and-matching per token in ``transformers``' ``StopStringCriteria``, so it
stays hand-written. During decoding a cheap per-token piece table only *detects* a probable stop; the exact
cut comes from the real decode (:func:`pfkit.rollout.generate`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence

#: The match starts at the newline, so the newline is cut too.
DEDENT = re.compile(r"\n\S")
#: Stop patterns for HumanEval-style completions of a function body.
CODE_STOPS = ("\ndef", "\nclass", "\nif __name__", "\nprint", DEDENT)

def find_stop(text: str, stops: Sequence[str | re.Pattern], newline_before: bool = False) -> int | None:
    """Character index in ``text`` where the earliest stop pattern begins, or ``None``.

    ``stops`` are plain strings or compiled regexes. With ``newline_before`` (the prompt ends with a
    newline) the search runs over ``"\\n" + text`` so that a response opening with ``def``/a dedent is
    caught; a match must still end inside ``text``, and one starting on that virtual newline gives 0.
    """
    offset = 1 if newline_before else 0
    hay = "\n" + text if newline_before else text
    best = None
    for stop in stops:
        if isinstance(stop, str):
            start = hay.find(stop)
            while start >= 0 and start + len(stop) <= offset:
                start = hay.find(stop, start + 1)
            if start >= 0:
                best = start if best is None else min(best, start)
        else:
            for m in stop.finditer(hay):
                if m.end() > offset:
                    best = m.start() if best is None else min(best, m.start())
                    break
    return None if best is None else max(0, best - offset)


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _piece_table(tokenizer) -> list[str]:
    """Per-token decoded strings, used only to *detect* stops cheaply during decoding."""
    try:
        table = _PIECES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        table = None
    if table is None:
        table = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        try:
            _PIECES[tokenizer] = table
        except TypeError:
            pass
    return table


def _kept_tokens(tokenizer, ids: list[int], cut: int) -> int:
    """Number of leading tokens that contribute at least one character to ``text[:cut]``.

    Token j covers characters ``[len(decode(ids[:j])), len(decode(ids[:j+1])))``; it is kept iff that
    span starts before ``cut``. Binary search over prefixes (decoded length grows with the prefix).
    """
    lo, hi = 0, len(ids)  # answer = smallest j with len(decode(ids[:j])) >= cut
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= cut:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _stop_end_tokens(tokenizer, ids, text, stops, newline_before):
    """Tokens needed to cover the whole earliest stop match (for ``stop_in_mask=True``)."""
    for j in range(1, len(ids) + 1):
        if find_stop(tokenizer.decode(ids[:j], skip_special_tokens=True), stops, newline_before) is not None:
            # the match may need the next char (regex lookahead/\S) - it is complete at this prefix
            return j
    return len(ids)
