"""AUTOMATIC1111's emphasis syntax: prompt text -> (text, weight) segments -> 75-token windows with weights.

The syntax (A1111's `parse_prompt_attention`, same results on the examples of its documentation):
  (text)        weight x 1.1; nested, ((text)) is x 1.21
  (text:1.4)    weight x 1.4 (any number, negative included)
  [text]        weight / 1.1
  \\( \\) \\[ \\] \\\\   the literal character; a lone backslash is dropped (as A1111 does)
  BREAK         (the word, in capitals) ends the current 75-token window: what follows starts a new one
An unclosed bracket weights everything after it; a closing bracket with no opening one is plain text, as is
`:` outside `(text:number)`. Neighbouring segments of equal weight are merged.

Where sdrt differs from A1111 (where A1111 arguably misbehaves): a `(text:N)` whose N is not a number (e.g.
`(a:1.2.3)`) is plain text instead of an error, and BREAK inside brackets still ends the window (A1111
multiplies its marker by the bracket's weight and then reads it as the word "BREAK"). A1111's prompt editing
(`[a:b:0.5]`), alternation (`[a|b]`) and `AND` are not interpreted: they read as the brackets above.

Window layout follows A1111's `tokenize_line` with comma backtracking off: each segment is tokenized on its
own, tokens fill windows of 75 in order, BREAK closes the current window (a leading BREAK leaves an empty
first window, as in A1111). A prompt without syntax is one segment, so its windows are exactly the
75-token chunks sdrt has always made.
"""

from __future__ import annotations

import re
from typing import Callable

Segment = tuple[str, "float | None"]  # (text, weight); weight None marks a BREAK

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# one token of the syntax per match, tried in this order
_TOKENS = re.compile(r"""
    (?P<escape>\\[()\[\]\\]?)               # \( \) \[ \] \\ (or a lone backslash)
  | (?P<weighted>:(?P<number>[+-]?[.\d]+)\)) # :1.4) closing a (text:1.4)
  | (?P<bracket>[()\[\]])
  | (?P<text>[^\\()\[\]:]+|:)
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt_attention(prompt: str) -> list[Segment]:
    """The prompt's (text, weight) segments in order; a BREAK is ("BREAK", None)."""
    segments: list[list] = []  # [text, weight]; weight None for a BREAK
    open_round: list[int] = []  # index into `segments` where each open bracket began
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for segment in segments[start:]:
            if segment[1] is not None:
                segment[1] *= factor

    for match in _TOKENS.finditer(prompt):
        token = match.group(0)
        if match.group("escape") is not None:
            segments.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(segments))
        elif token == "[":
            open_square.append(len(segments))
        elif match.group("weighted") is not None and open_round and _is_number(match.group("number")):
            scale(open_round.pop(), float(match.group("number")))
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    segments.append(["BREAK", None])
                segments.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale(start, SQUARE_MULTIPLIER)
    return _merged(segments or [["", 1.0]])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _merged(segments: list[list]) -> list[Segment]:
    out: list[list] = []
    for text, weight in segments:
        if out and weight is not None and out[-1][1] == weight:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return [(text, weight) for text, weight in out]


def literal(prompt: str) -> list[Segment]:
    """The prompt as one segment of weight 1: no syntax at all (A1111's emphasis "None")."""
    return [(prompt, 1.0)]


def has_syntax(prompt: str) -> bool:
    """Whether weighting would read anything in `prompt` differently from plain text (for the PNG's
    "Emphasis" key, which A1111 writes when brackets are taken literally)."""
    return "(" in prompt or "[" in prompt


def token_windows(segments: list[Segment], tokenize: Callable[[str], list[int]],
                  size: int) -> list[tuple[list[int], list[float]]]:
    """(token ids, weights) per window of at most `size` tokens, BOS/EOS not included."""
    windows: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in segments:
        if weight is None:
            windows.append((ids, weights))
            ids, weights = [], []
            continue
        for token in tokenize(text):
            if len(ids) == size:
                windows.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not windows:
        windows.append((ids, weights))
    return windows
