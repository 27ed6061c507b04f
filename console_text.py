"""What the console prints on a terminal: each line laid out so the terminal never wraps it.

A terminal wraps a line wider than itself, and what it wraps starts at column 0 like a line of
its own: a message padded (with spaces, or anything else) to the terminal's width could show
``carol: hi`` there, a line carol never wrote.  So on a terminal the console wraps every line
itself, to the width the terminal has when the line is printed, and starts every continuation
row with ``CONTINUATION`` (``  │ ``), which no first row starts with (they start with a name,
``#room``, ``*`` or ``[``).  Each row is visibly part of the line above it, whatever the text.

Widths are counted per character as the widest a terminal is known to draw it (wide East Asian
characters and emoji 2 cells, an emoji-style VS16 on a narrow symbol 2, combining marks 0, every
other character at least 1), and the last column is left free: a terminal that draws something
narrower than counted ends the row early, never wraps it.  Runs of more than three spaces
(a tab is four, ``safe_text``) are shown as `` ⋯ ``, and the Hangul filler letters,
printable characters that show nothing, are escaped like control characters.

A pipe or a file gets lines exactly as they are: one line per event, for scripts.
"""

from __future__ import annotations

import shutil
import unicodedata
from functools import lru_cache
from typing import Any

from safe_text import safe_text

#: Starts every row of a line but the first (``NARROW_CONTINUATION`` on a narrow terminal).
CONTINUATION = "  │ "
NARROW_CONTINUATION = "│ "
#: Narrowest terminal that gets ``CONTINUATION``; below it the marker takes fewer cells.
CONTINUATION_MIN_WIDTH = 16
#: A run of more than ``MAX_SPACES`` spaces is shown as ``SQUEEZED``.
MAX_SPACES = 3
SQUEEZED = " ⋯ "

_JOINERS = frozenset("\u200c\u200d")
_VS16 = "\ufe0f"  # asks for the emoji (wide) form of the character before it
#: Letters that show nothing (Hangul fillers): escaped, as they would be invisible padding.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")


def to_print(line: str, stream: Any, *, squeeze: bool = True) -> str:
    """What to print for ``line`` on ``stream``: laid out to the width of a terminal, unchanged otherwise.

    ``squeeze=False`` keeps runs of spaces (the console's own aligned text, such as the help).
    """
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        terminal = False
    if not terminal:
        return line
    return lay_out(line, shutil.get_terminal_size().columns, squeeze=squeeze)


def lay_out(line: str, width: int, *, squeeze: bool = True) -> str:
    """``line`` as rows for a terminal ``width`` cells wide, joined by newlines; no row needs wrapping."""
    rows: list[str] = []
    for part in line.split("\n"):
        rows.extend(wrap(visible(part, squeeze=squeeze), width))
    return "\n".join(rows)


def visible(text: str, *, squeeze: bool = True) -> str:
    """``text`` with nothing that moves the cursor or hides: ``safe_text``, escaped fillers, squeezed spaces."""
    text = safe_text(text)
    if not _INVISIBLE.isdisjoint(text):
        text = "".join(f"\\u{ord(c):04x}" if c in _INVISIBLE else c for c in text)
    if squeeze and text.count(" ") > MAX_SPACES:
        out: list[str] = []
        run: list[str] = []  # spaces, each with any marks on it (a way around a squeeze on spaces alone)
        for cluster, _ in _clusters(text):
            if cluster[0] == " ":
                run.append(cluster)
                continue
            out.append(SQUEEZED if len(run) > MAX_SPACES else "".join(run))
            out.append(cluster)
            run = []
        out.append(SQUEEZED if len(run) > MAX_SPACES else "".join(run))
        text = "".join(out)
    return text


def wrap(text: str, width: int) -> list[str]:
    """``text`` (printable, one line) as rows of at most ``width - 1`` cells, continuation rows marked.

    Breaks at the last space of a row when there is one past its first third (the spaces at a break
    are not shown), else between two characters; a character never straddles the edge.
    """
    width = max(width, 1)
    usable = width - 1 if width > 3 else width  # the last column stays free (see the module's doc)
    marker = CONTINUATION if width >= CONTINUATION_MIN_WIDTH else NARROW_CONTINUATION if width >= 6 else "│"
    clusters = _clusters(text)
    rows: list[str] = []
    prefix, limit = "", usable
    start = 0
    while True:
        cells, end, space = 0, start, None
        while end < len(clusters):
            chunk, size = clusters[end]
            if chunk[0] == " " and cells * 3 >= limit:
                space = end  # a space a third of the way or more: a break there leaves a row worth the name
            if cells + size > limit and end > start:
                break  # doesn't fit (a row always takes one cluster, so even 1 column makes progress)
            cells += size
            end += 1
        if end < len(clusters) and space is not None and space > start:
            end = space  # break at the last space of the row
        rows.append(prefix + "".join(c for c, _ in clusters[start:end]).rstrip(" "))
        start = end
        while start < len(clusters) and clusters[start][0][0] == " ":
            start += 1  # the spaces at a break
        if start >= len(clusters):
            return rows
        prefix, limit = marker, max(usable - width_of(marker), 1)


def width_of(text: str) -> int:
    """Cells ``text`` may take on a terminal (the widest count, as ``wrap`` uses)."""
    return sum(size for _, size in _clusters(text))


def _clusters(text: str) -> list[tuple[str, int]]:
    """``text`` as (characters drawn in one place, cells): a character with the zero-width ones after it."""
    clusters: list[tuple[str, int]] = []
    for char in text:
        size = _cells(char)
        if size == 0 and clusters:
            base, cells = clusters[-1]
            if char == _VS16 and cells == 1 and _VS16 not in base:
                cells = 2  # e.g. a heart drawn as an emoji
            clusters[-1] = (base + char, cells)
        else:
            clusters.append((char, size))
    return clusters


@lru_cache(maxsize=4096)
def _cells(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me") or char in _JOINERS:
        return 0
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 2
    from prompt_toolkit.utils import get_cwidth  # here: importing prompt_toolkit takes 0.1 s, only a terminal needs it

    return max(get_cwidth(char), 1)
