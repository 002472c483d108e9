"""The schema names outboxkit accepts: checked once, wherever a schema name comes in.

A schema name is always quoted with `psycopg.sql.Identifier`, so any text is safe *inside*
a statement. It is refused here because it also reaches places a quote does not protect:
the comment lines of `outboxkit migrate --sql` (a newline there starts a bare SQL line),
log lines, channel names and terminals.
"""

from __future__ import annotations

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.limits import text_problem

# PostgreSQL's NAMEDATALEN - 1: a longer identifier is silently truncated by the server.
MAX_IDENTIFIER_BYTES = 63


def check_schema_name(schema: str) -> str:
    """Return `schema` if it can name outboxkit's schema; raise `ConfigurationError` if not.

    Refused: the empty string, control characters (newlines, tabs and NUL included), lone
    surrogates, and more than 63 bytes of UTF-8.
    """
    if not isinstance(schema, str):
        raise ConfigurationError(f"a schema name must be a str, not {type(schema).__name__}")
    problem = "is empty" if not schema else text_problem(schema, MAX_IDENTIFIER_BYTES)
    if problem:
        # !r escapes what we refuse: the error line never carries the raw name.
        raise ConfigurationError(f"invalid schema name {schema!r}: it {problem}")
    return schema
