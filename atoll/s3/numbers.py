"""Numbers in S3 requests (query values, headers, XML): plain ASCII decimal only.

``str.isdigit()`` alone also accepts "²" and "١", which ``int()`` then refuses (a 500) or reads as a digit S3
would refuse; ``int()`` alone also accepts " 1", "1_0" and "+1".
"""

from __future__ import annotations


def is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def is_integer(text: str) -> bool:
    """An optional '-' followed by ASCII digits."""
    return is_ascii_digits(text[1:] if text[:1] == "-" else text)
