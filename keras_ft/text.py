"""Names are data: class and file names shown on a terminal, in a CSV file and in a report.

A class is whatever a user named a folder, so it may hold an escape sequence
(which a terminal runs), start with `=` (which a spreadsheet runs) or hold
`$...$` (which matplotlib parses as mathtext). These helpers are the one place
that decides how such text is shown; HTML escaping is `html.escape` of
`printable(text)`, and plots pass `parse_math=False`.
"""

from __future__ import annotations

import unicodedata

# Characters that reorder the text around them on screen (a name can be made to look like another).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A spreadsheet runs a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """`str(text)` with control characters written as escapes, e.g. ESC as `\\x1b`.

    C0 and C1 controls, DEL and the bidirectional-text controls are escaped;
    every other character (letters of any script, backslashes) is kept.

    Args:
        text: the text to show; not a str is converted with `str`.

    Returns:
        Text that cannot move the cursor, change colours or reorder a terminal line.
    """
    text = str(text)
    return "".join(
        _escape(c) if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS else c for c in text
    )


def csv_cell(value):
    """`value` for a CSV cell: text a spreadsheet would run as a formula gets a leading `'`.

    Args:
        value: a cell; only strings starting with `= + - @`, a tab or a carriage
            return are changed. Numbers are returned as they are.

    Returns:
        The cell to write.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
