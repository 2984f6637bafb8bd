"""Class and file names are data: shown on a terminal, in a CSV and in HTML without harm."""

from __future__ import annotations

import pytest

from keras_ft.utils.text import csv_cell, format_rate, printable


@pytest.mark.parametrize(
    "text, shown",
    [
        ("cat", "cat"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\rb\nc\td\x00e\x7f", "a\\rb\\nc\\td\\x00e\\x7f"),
        ("\x9b2J", "\\x9b2J"),  # a C1 control: CSI on some terminals
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # right-to-left override
        ("čaj ß 猫 $\\bad{x}$", "čaj ß 猫 $\\bad{x}$"),  # letters and backslashes stay
    ],
)
def test_printable_escapes_control_characters_only(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", "'=1+1"),
        ("+33", "'+33"),
        ("-x", "'-x"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("cat=1", "cat=1"),
        ("", ""),
        (0.5, 0.5),
        (-1, -1),  # numbers are numbers, not formulas
    ],
)
def test_csv_cell_quotes_what_a_spreadsheet_would_run(value, cell):
    assert csv_cell(value) == cell


@pytest.mark.parametrize(
    ("rate", "text"), [(0.01, "0.01"), (1e-3, "0.001"), (3e-4, "3e-4"), (2.5e-5, "2.5e-5")]
)
def test_format_rate_writes_a_learning_rate_as_people_do(rate, text):
    assert format_rate(rate) == text
