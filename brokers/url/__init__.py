"""The one reading of broker URLs, shared by every `brokers/<name>/options.py`.

- `split`: a broker URL into scheme, credentials, hosts (default ports filled in), path and
  query, with error texts that never quote a piece of a credential.
- `convert`: the converters of option values (one truth table for booleans; numbers that
  refuse NaN, infinity and anything but plain ASCII digits).
- `table`: a broker's options as a table (name, converter, side, doc line): one reading
  of the query, one "unknown option" error, and the source of `docs/brokers.md` and of the
  option names `outbox.redact` shows.
"""

from __future__ import annotations

from outboxkit.brokers.url.convert import (
    BOOL,
    SECONDS,
    TEXT,
    Converter,
    choice,
    converter,
    finite_float,
    integer,
    non_empty,
    number,
    optional,
)
from outboxkit.brokers.url.split import (
    NETLOC_PROBLEM,
    STRAY_AT,
    Host,
    SplitUrl,
    scrub,
    shown_name,
    split_url,
    stray_at,
)
from outboxkit.brokers.url.table import CONNECT_TIMEOUT, Option, OptionTable, Side

__all__ = [
    "BOOL",
    "CONNECT_TIMEOUT",
    "NETLOC_PROBLEM",
    "SECONDS",
    "STRAY_AT",
    "TEXT",
    "Converter",
    "Host",
    "Option",
    "OptionTable",
    "Side",
    "SplitUrl",
    "choice",
    "converter",
    "finite_float",
    "integer",
    "non_empty",
    "number",
    "optional",
    "scrub",
    "shown_name",
    "split_url",
    "stray_at",
]
