"""Text from another user, made safe to show: on a terminal, in a window, in a log line.

Used by every program that shows what others wrote (the console, the window, the broker's log,
the web gateway's), and mirrored by ``safeText`` in ``static/chat.js``.
"""

from __future__ import annotations

import unicodedata

# Bidi controls can make text read backwards on someone else's screen ("Trojan Source").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Zero-width (non-)joiners are format characters too, but they are needed to write emoji
# sequences (family, rainbow flag) and Persian or Indic text, and cannot move anything.
_JOINERS = frozenset("\u200c\u200d")


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """Text from another user, made safe to print on a terminal.

    Control characters (C0, DEL, C1: so every escape sequence), line and
    paragraph separators and bidi overrides are shown as visible escapes such
    as ``\\x1b``; a message can neither move the cursor, clear a screen, nor fake
    a second line that looks like another user's message.
    """
    if text.isprintable():  # the common case: nothing to do
        return text
    out = []
    for char in text:
        if (char.isprintable() and char not in _BIDI) or char in _JOINERS:
            out.append(char)
        elif char == "\t":
            out.append("    ")
        elif char == " " or unicodedata.category(char) == "Zs":
            out.append(" ")
        else:
            out.append(_escape_char(char))
    return "".join(out)
