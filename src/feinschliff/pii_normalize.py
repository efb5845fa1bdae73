"""The text ``feinschliff.pii`` analyses: look-alike characters made plain, positions kept.

The recognizers are ASCII patterns: a non-breaking or thin space between an IBAN's groups
(web forms and Word put U+00A0/U+202F there), a zero-width space inside a number, full-width
digits (East Asian keyboards, some PDF exports), an ``@`` written as a JSON escape
(``\\u0040``), URL-encoded (``%40``, a query string in a log) or as an HTML entity (``&#64;``),
a soft hyphen inside an address (copied from a web page) each hid a value from them, or part
of it. Decimal digits of other scripts (Arabic-Indic, Devanagari, mathematical bold ``𝟎``) are
made ASCII too: the patterns' ``\\d`` and libphonenumber read them, so a phone number or
USt-IdNr. written in them was found but never reached the analyzer (the prefilter looks for
ASCII digits), and an IBAN, Steuer-ID or card number written in them was not found at all.
``normalized`` maps such characters to their plain form for the analysis only, and
``Normalized.span`` maps each finding back onto the original text, which is what gets
redacted; a text without such characters is analysed as it is.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

# JSON's escapes only: another backslash pair (``FIRMA\\max@...``, ``\\\\10.0.0.1``) is text,
# and decoding its second character would cut the first one off an identifier. ``\\n`` stays a
# line break: the phone matcher reads blank-separated digit groups as one number.
_ESCAPE = r'\\(?:u[0-9a-fA-F]{4}|[nrt"\\/bf])'
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "/": "/", "b": " ", "f": " "}
# An encoded '@' only between address characters ("100%40" in prose stays as it is); in a URL
# also an encoded '+' before a digit (``tel=%2B49171...``) and an encoded blank.
_ENCODED = r"(?<=[\w.+-])(?:%40|&#64;|&#[xX]40;|&commat;)(?=\w)|%2[bB](?=\d)|%20"
_DECODED = {"%20": " ", "%2b": "+"}  # the rest is an '@'
_SPACES = "\u00a0\u2000-\u200a\u202f\u205f\u3000"  # no-break, thin, figure, ideographic
_INVISIBLE = "\u00ad\u200b-\u200f\u2060\ufeff"  # soft hyphen, zero-width, direction marks
_DASHES = "\u2010-\u2015\u2212"  # hyphen, non-breaking hyphen, figure/en/em dash, minus
_FULL_WIDTH = "\uff01-\uff5e"  # full-width ASCII ('１', '＠', 'Ｄ')
_OTHER_DIGIT = r"[^\D0-9]"  # a decimal digit (Unicode Nd) that is not ASCII
_SPECIAL = re.compile(
    rf"{_ESCAPE}|{_ENCODED}|[{_SPACES}{_INVISIBLE}{_DASHES}\u2028\u2029{_FULL_WIDTH}]"
    rf"|{_OTHER_DIGIT}"
)
# The first characters of ``_SPECIAL``'s matches, as two plain scans: 3x faster than the
# search for ``_SPECIAL`` itself, and ``normalized`` runs on every text (the prefilter reads it).
_MAY_CHANGE = (
    re.compile(rf"[\\%&{_SPACES}{_INVISIBLE}{_DASHES}\u2028\u2029{_FULL_WIDTH}]").search,
    re.compile(_OTHER_DIGIT).search,
)
_SPACE = re.compile(f"[{_SPACES}]").fullmatch
_GONE = re.compile(f"[{_INVISIBLE}]").fullmatch
_DASH = re.compile(f"[{_DASHES}]").fullmatch


class Normalized:
    """A text for analysis, and the way back from its positions to the original's."""

    def __init__(self, text: str, original: str, segments: list[tuple[int, int, int, bool]]):
        self.text = text
        self._original = original
        # (start here, start there, end there, copied): copied runs map position by position,
        # a replaced run (an escape, '%40') maps as a whole onto its original characters
        self._segments = segments
        self._starts = [s[0] for s in segments]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]`` (a replaced run is covered whole)."""
        if self.text is self._original or end <= start:
            return start, end
        return self._there(start, at_end=False), self._there(end - 1, at_end=True)

    def _there(self, pos: int, *, at_end: bool) -> int:
        here, there, there_end, copied = self._segments[bisect_right(self._starts, pos) - 1]
        if copied:
            return there + pos - here + at_end
        return there_end if at_end else there


def normalized(text: str) -> Normalized:
    """``text`` with JSON escapes decoded, encoded '@'s, odd spaces, dashes, full-width
    characters and other scripts' digits made plain and invisible characters dropped (see the
    module docstring)."""
    if text.isascii() and "\\" not in text and "%" not in text and "&" not in text:
        return Normalized(text, text, [])
    if not any(search(text) for search in _MAY_CHANGE):
        return Normalized(text, text, [])
    parts: list[str] = []
    segments: list[tuple[int, int, int, bool]] = []
    here = done = 0
    for match in _SPECIAL.finditer(text):
        if match.start() > done:
            segments.append((here, done, match.start(), True))
            parts.append(text[done : match.start()])
            here += match.start() - done
        plain = _plain(match.group())
        if plain:
            segments.append((here, match.start(), match.end(), False))
            parts.append(plain)
            here += len(plain)
        done = match.end()
    if not segments and done == 0:
        return Normalized(text, text, [])
    if done < len(text):
        segments.append((here, done, len(text), True))
        parts.append(text[done:])
    return Normalized("".join(parts), text, segments)


def _plain(found: str) -> str:
    if found[0] == "\\":
        if found[1] != "u":
            return _UNESCAPE[found[1]]
        found = chr(int(found[2:], 16))
        if not found.isprintable() and not _SPECIAL.fullmatch(found):
            return " "  # a control character or half a surrogate pair: a separator
    if len(found) > 1:
        return _DECODED.get(found.lower(), "@")
    if _SPACE(found):
        return " "
    if _GONE(found):
        return ""
    if _DASH(found):
        return "-"
    if "\uff01" <= found <= "\uff5e":
        return chr(ord(found) - 0xFEE0)
    if found in "\u2028\u2029":
        return "\n"
    if found.isdecimal():
        return str(unicodedata.decimal(found))
    return found
