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

``lay_out_styled`` does the same for a line in coloured parts (the console's time, names, labels):
the same rows, each part in its SGR style, every styled row reset at its end.

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
    text = _escaped(text)
    if squeeze and text.count(" ") > MAX_SPACES:
        text = "".join(cluster for cluster, _ in _squeezed([(cluster, "") for cluster, _ in _clusters(text)]))
    return text


def _escaped(text: str) -> str:
    """``safe_text``, and the invisible letters escaped too: character by character."""
    text = safe_text(text)
    if not _INVISIBLE.isdisjoint(text):
        text = "".join(f"\\u{ord(c):04x}" if c in _INVISIBLE else c for c in text)
    return text


def _squeezed(clusters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(cluster, style) with each run of more than ``MAX_SPACES`` spaces (each with any marks on it: a way
    around a squeeze on spaces alone) as ``SQUEEZED``, in the style of the run's first space."""
    out: list[tuple[str, str]] = []
    run: list[tuple[str, str]] = []
    for cluster in [*clusters, ("", "")]:  # the end flushes the last run
        if cluster[0][:1] == " ":
            run.append(cluster)
            continue
        if len(run) > MAX_SPACES:
            out += [(char, run[0][1]) for char in SQUEEZED]
        else:
            out += run
        if cluster[0]:
            out.append(cluster)
        run = []
    return out


def wrap(text: str, width: int) -> list[str]:
    """``text`` (printable, one line) as rows of at most ``width - 1`` cells, continuation rows marked.

    Breaks at the last space of a row when there is one past its first third (the spaces at a break
    are not shown), else between two characters; a character never straddles the edge.
    """
    clusters = _clusters(text)
    rows = _rows(clusters, width)
    return [marker + "".join(c for c, _ in clusters[start:end]).rstrip(" ") for marker, start, end in rows]


def _rows(clusters: list[tuple[str, int]], width: int) -> list[tuple[str, int, int]]:
    """Where ``wrap`` breaks: each row as (its continuation marker, first cluster, end)."""
    width = max(width, 1)
    usable = width - 1 if width > 3 else width  # the last column stays free (see the module's doc)
    marker = CONTINUATION if width >= CONTINUATION_MIN_WIDTH else NARROW_CONTINUATION if width >= 6 else "│"
    rows: list[tuple[str, int, int]] = []
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
        rows.append((prefix, start, end))
        start = end
        while start < len(clusters) and clusters[start][0][0] == " ":
            start += 1  # the spaces at a break
        if start >= len(clusters):
            return rows
        prefix, limit = marker, max(usable - width_of(marker), 1)


#: A run of text and how it is drawn: SGR parameters (``"1;31"``, bold red), "" for the terminal's default.
Segment = tuple[str, str]
#: How continuation markers are drawn: grey.
MARKER_STYLE = "90"
RESET = "\x1b[0m"


def lay_out_styled(segments: list[Segment], width: int, *, squeeze: bool = True) -> str:
    """``lay_out`` of the segments' text joined, each drawn in its style (SGR colours and attributes).

    The text is made ``visible`` and broken into rows exactly as ``lay_out`` does it for the same text
    unstyled; each character keeps the style of the segment it came from.  Every row that sets a style
    ends with a reset, so nothing bleeds into the next row (or the prompt).  The styles are the
    console's own, never from the text.
    """
    lines: list[list[Segment]] = [[]]
    for text, style in segments:
        for i, part in enumerate(text.split("\n")):
            if i:
                lines.append([])
            if part:
                lines[-1].append((_escaped(part), style))
    out: list[str] = []
    for line in lines:
        text = "".join(part for part, _ in line)
        char_styles = [style for part, style in line for _ in part]
        clusters = _clusters(text)
        if squeeze and text.count(" ") > MAX_SPACES:
            squeezed = _squeezed(list(zip([c for c, _ in clusters], _styles(clusters, char_styles), strict=True)))
            char_styles = [style for chunk, style in squeezed for _ in chunk]
            clusters = _clusters("".join(chunk for chunk, _ in squeezed))
        styles = _styles(clusters, char_styles)
        for marker, start, end in _rows(clusters, width):
            while end > start and clusters[end - 1][0] == " ":
                end -= 1  # as ``wrap`` strips them
            row = [(marker, MARKER_STYLE)] if marker else []
            row += [(clusters[i][0], styles[i]) for i in range(start, end)]
            out.append(_sgr(row))
    return "\n".join(out)


def _styles(clusters: list[tuple[str, int]], char_styles: list[str]) -> list[str]:
    """The style of each cluster: its first character's (``char_styles`` has one per character)."""
    styles: list[str] = []
    at = 0
    for chunk, _ in clusters:
        styles.append(char_styles[at])
        at += len(chunk)
    return styles


def _sgr(parts: list[Segment]) -> str:
    """Text with an SGR sequence wherever the style changes, and a reset at the end if any was set."""
    text: list[str] = []
    current = ""
    for chunk, style in parts:
        if style != current:
            text.append(f"\x1b[0;{style}m" if style else RESET)
            current = style
        text.append(chunk)
    if current:
        text.append(RESET)
    return "".join(text)


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
