"""Pieces every broker URL parser (brokers/*/options.py) shares: numbers and safe error texts.

Error texts of a parser never quote the URL's pieces verbatim where they might be part of
a credential: a password with an unencoded `/`, `?` or `#` is misread as a host, a port or
a query, so Python's "Port could not be cast to integer value as '…'" and an unknown
option's name may be a piece of it.
"""

from __future__ import annotations

import math
import re

# Why urlsplit refused the host part: its own message would quote the (mis)read port.
NETLOC_PROBLEM = (
    "cannot read the host and port (percent-encode any '@', ':', '/', '?' or '#' "
    "in the user name or password)"
)
STRAY_AT = (
    "an '@' after the host: percent-encode '@', ':', '/', '?' and '#' in the user name and "
    "password, and any other '@' as %40"
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_END_OF_HOST = re.compile(r"[/?#]")


def finite_float(raw: str) -> float:
    """`float(raw)`, refusing `nan`, `inf` and what overflows to it (`1e999`)."""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def shown_name(name: str) -> str:
    """An unknown option's name for an error message: quoted if it is a plain name."""
    return repr(name) if _PLAIN_NAME.fullmatch(name) else "(name not shown)"


def stray_at(url: str) -> bool:
    """Whether `url` has an `@` after its host part (where a URL parser says it ends).

    Most often a password with an unencoded `/`, `?` or `#`: read as is, a piece of the
    password would become the host, the path or a query option, and show up in errors
    and reprs. Refusing the URL is the only reading that cannot leak it.
    """
    rest = url.partition("://")[2]
    end = _END_OF_HOST.search(rest)
    return end is not None and "@" in rest[end.start() :]
