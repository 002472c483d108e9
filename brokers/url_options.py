"""A broker's URL options as one table: what each option is, converts to, defaults to,
which side reads it, and one line of documentation.

The table is the one truth for reading a URL's query (one "unknown option" error, the
option named in every conversion error), for `docs/brokers.md` (`scripts/brokers_doc.py`)
and for the option names `outbox.redact` may show (`outbox/broker_options.py`, generated
from the tables by the same script).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from outboxkit.brokers.url import SplitUrl, shown_name, split_url
from outboxkit.brokers.url_values import SECONDS, Converter
from outboxkit.outbox.errors import ConfigurationError

Side = Literal["both", "publisher", "consumer"]


@dataclass(frozen=True)
class Option:
    """One URL option."""

    name: str  # as written in the URL, less the table's prefix
    convert: Converter
    doc: str  # one line, for docs/brokers.md
    side: Side = "both"  # who reads it; the other side accepts (and checks) it too
    default: str | None = None  # as documented; None: the options class's default
    secret: bool = False  # its value is masked wherever the URL is shown
    attr: str = ""  # the options class's field; default: the name

    def __post_init__(self) -> None:
        if not self.attr:
            object.__setattr__(self, "attr", self.name)


@dataclass(frozen=True)
class OptionTable:
    """A broker's URL syntax and options; `kind` is the options class they fill in."""

    label: str  # in messages: "invalid NATS URL …"
    form: str  # the URL's shape, for messages and docs
    schemes: Mapping[str, int | None]  # scheme -> default port
    kind: type
    options: tuple[Option, ...]
    prefix: str = ""  # every option name starts with it (http: `outboxkit_`)
    many_hosts: bool = False
    host_required: bool = True
    _by_name: dict[str, Option] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self.kind)}
        by_name = {}
        for option in self.options:
            # An option with no field of its own (SQS's `tls`) documents its default.
            if option.attr not in fields and option.default is None:
                raise TypeError(f"{self.kind.__name__} has no field {option.attr}")
            by_name[self.prefix + option.name] = option
        object.__setattr__(self, "_by_name", by_name)

    def names(self) -> tuple[str, ...]:
        """Every option name as written in a URL."""
        return tuple(self._by_name)

    def split(self, url: str) -> SplitUrl:
        """`url` split (`split_url`) by this table's syntax."""
        return split_url(
            url,
            label=self.label,
            schemes=self.schemes,
            form=self.form,
            many_hosts=self.many_hosts,
            host_required=self.host_required,
        )

    def read(
        self, pairs: Iterable[tuple[str, str]], shown: str, side: Side | None = None
    ) -> dict[str, Any]:
        """The fields of `kind` the `(name, value)` pairs give (the last of a name wins).

        Every option is checked; with a `side`, those only the other side reads are then
        dropped (left at their defaults), so one URL serves both sides.
        `ConfigurationError` for an unknown option or a value its converter refuses.
        """
        found: dict[str, Any] = {}
        for name, raw in pairs:
            option = self._by_name.get(name)
            if option is None:
                known = ", ".join(sorted(self._by_name))
                raise ConfigurationError(
                    f"invalid option in {shown}: unknown option {shown_name(name)}; known: {known}"
                )
            try:
                value = option.convert(raw)
            except ValueError as exc:
                raise ConfigurationError(f"invalid option in {shown}: {name}: {exc}") from None
            if side is None or option.side in ("both", side):
                found[option.attr] = value
        return found

    def read_url(self, url: SplitUrl, side: Side | None = None) -> dict[str, Any]:
        """`read` of the whole query of `url`."""
        return self.read(((n, v) for n, v, _ in url.items()), url.shown, side)

    def default(self, option: Option) -> str:
        """`option`'s default as documented."""
        if option.default is not None:
            return option.default
        found = next(f for f in dataclasses.fields(self.kind) if f.name == option.attr)
        return _shown(found.default)


def _shown(value: object) -> str:
    if value is None or value == ():
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | frozenset):
        return ",".join(str(v) for v in sorted(value)) or "(none)"
    if isinstance(value, str):
        return f"`{value}`" if value else '""'
    return str(value)


# Options several brokers share, word for word.
CONNECT_TIMEOUT = Option("connect_timeout", SECONDS, "seconds to open a connection")
