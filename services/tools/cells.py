"""Cells of the CSV files people open in a spreadsheet: text that would run as a formula.

Excel, LibreOffice and Google Sheets run a CSV cell that starts with `=`, `+`, `-` or `@` (and
tab or carriage return) as a formula (OWASP "CSV injection"): `=HYPERLINK(...)` becomes a live
link, worse formulas reach other cells or the network. People and cameras write such cells: a
reviewer's typed label, a program's deployment name, a file name. The report's sheets and the
sort log neutralise them; the Camtrap DP package keeps the exact text, since it is data
(docs/exports.md says how to open it safely).
"""

from __future__ import annotations

import re
from typing import Any

# A cell whose text starts with one of these is run as a formula by Excel, LibreOffice and Google
# Sheets when a CSV is opened (OWASP "CSV injection"); people and cameras write these cells (a
# reviewer's typed label, a deployment's name, a file name).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# A signed number or UTC offset ("-5", "+01:00", "-0.5") is a value, not a formula.
SIGNED_VALUE = re.compile(r"[+-]\d+(?:[.:]\d+)*")


def neutralised(value: Any) -> Any:
    """`value` for a CSV cell a spreadsheet opens: text that would start a formula gets a
    leading apostrophe (the spreadsheet's own mark for "text"); anything else as it is."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not SIGNED_VALUE.fullmatch(value)
    ):
        return "'" + value
    return value
