"""Names are data: class and file names shown on a terminal, in a CSV file and in a report.

A class is whatever a user named a folder, so it may hold an escape sequence
(which a terminal runs), start with `=` (which a spreadsheet runs) or hold
`$...$` (which matplotlib parses as mathtext). These helpers are the one place
that decides how such text is shown; HTML escaping is `html.escape` of
`printable(text)`, and plots pass `parse_math=False`.
"""

from __future__ import annotations

import difflib
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


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn `a` into `b`."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (x != y)))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def close_matches(given: str, candidates, n: int = 3) -> list[str]:
    """The candidates `given` was most likely meant to be, for a "did you mean" hint.

    `difflib.get_close_matches` finds the similar ones; of those, the fewest typing
    mistakes away (swapped neighbours count as one, so 'vgg61' is 'vgg16', not
    'vgg19') are kept, at most `n`, in the candidates' own order.

    Args:
        given: what was received, e.g. an unknown name.
        candidates: the names that exist.
        n: at most this many.

    Returns:
        The likely names; empty when none is close.
    """
    candidates = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(given, candidates, n=max(n, 10), cutoff=0.6)
    if not close:
        return []
    edits = {name: _edits(given, name) for name in close}
    fewest = min(edits.values())
    return [name for name in candidates if edits.get(name) == fewest][:n]


def one_of(names, quote: bool = True) -> str:
    """`'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`: names as a sentence says them."""
    names = [repr(str(name)) if quote else str(name) for name in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def did_you_mean(given: str, candidates) -> str:
    """`" Did you mean 'x'?"` for the `close_matches` of `given`, or `""` if none."""
    close = close_matches(given, candidates)
    return f" Did you mean {one_of(close)}?" if close else ""


def format_rate(rate: float) -> str:
    """A learning rate as people write it: `0.001`, `3e-4`, `1.5e-5`."""
    if rate >= 1e-3:
        return f"{rate:g}"
    mantissa, exponent = f"{rate:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
