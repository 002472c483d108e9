"""A broker URL split once: scheme, credentials, hosts with their ports, path and query.

The one reading of broker URLs that every `brokers/<name>/options.py` shares is three
modules: this one (the split), `url_values` (the converters of option values) and
`url_options` (a broker's options as a table: the query read once, one "unknown option"
error, the source of docs/brokers.md).

Error texts never quote the URL's pieces verbatim where they might be part of a
credential: a password with an unencoded `/`, `?` or `#` is misread as a host, a port or
a query, so a misread port or an unknown option's name may be a piece of it. Messages
show the URL as `outbox.redact.redact_dsn` shows it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, unquote_plus

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import MASK, redact_dsn

# Why the host part cannot be read: a misread port or host may be a piece of a password.
NETLOC_PROBLEM = (
    "cannot read the host and port (percent-encode any '@', ':', '/', '?' or '#' "
    "in the user name or password)"
)
STRAY_AT = (
    "an '@' after the host: percent-encode '@', ':', '/', '?' and '#' in the user name and "
    "password, and any other '@' as %40"
)
PORT_PROBLEM = "the port must be a number from 1 to 65535"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_END_OF_HOST = re.compile(r"[/?#]")
_NOT_IN_HOST = re.compile(r"[\s\[\]\\<>\"'`{}|^%,]")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%25[A-Za-z0-9_.~-]+)?")


@dataclass(frozen=True)
class Host:
    """One host of a URL: its name (lower case; IPv6 without brackets) and port."""

    name: str
    port: int | None  # None: none written and the scheme has no default

    def __str__(self) -> str:
        name = f"[{self.name}]" if ":" in self.name else self.name
        return name if self.port is None else f"{name}:{self.port}"


@dataclass(frozen=True)
class SplitUrl:
    """A broker URL's pieces, credentials percent-decoded, the rest as written."""

    scheme: str  # lower case
    shown: str  # the URL fit for messages (`redact_dsn`)
    hosts: tuple[Host, ...]  # () only where a host is optional
    netloc: str = field(repr=False)  # the host part as written (`host:port[,...]`)
    path: str = ""  # raw, with its leading `/`
    query: str = field(default="", repr=False)  # raw: may hold keys of the endpoint's own
    fragment: str = field(default="", repr=False)
    user: str | None = field(default=None, repr=False)  # None: no `…@`; alone, maybe a token
    password: str | None = field(default=None, repr=False)  # None: no `:` in the userinfo

    @property
    def host(self) -> Host | None:
        """The (first) host, or None."""
        return self.hosts[0] if self.hosts else None

    def items(self) -> list[tuple[str, str, str]]:
        """The query as `(name, value, item as written)`, decoded like a form (`+` is a space)."""
        found = []
        for item in filter(None, self.query.split("&")):
            name, _, value = item.partition("=")
            found.append((unquote_plus(name), unquote_plus(value), item))
        return found

    def refuse_path(self, hint: str = "") -> None:
        """`ConfigurationError` if the URL has a path (a lone `/` is none)."""
        if self.path not in ("", "/"):
            raise self.error(hint or f"a {self.scheme}:// URL has no path")

    def error(self, problem: str) -> ConfigurationError:
        """A `ConfigurationError` about this URL."""
        return ConfigurationError(f"{self.shown}: {problem}")


def split_url(
    url: str,
    *,
    label: str,
    schemes: Mapping[str, int | None],
    form: str,
    many_hosts: bool = False,
    host_required: bool = True,
) -> SplitUrl:
    """`url` split into its pieces; `ConfigurationError` naming `label` (`"NATS"`) if it is
    malformed, or `form` (`"nats://host[:port]"`) if its scheme is not one of `schemes`
    (scheme -> default port). `many_hosts`: comma-separated hosts are allowed."""
    shown = redact_dsn(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid {label} URL {shown}: {STRAY_AT}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise ConfigurationError(f"expected {form}, got {shown}")
    end = _END_OF_HOST.search(rest)
    netloc, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    tail, _, fragment = tail.partition("#")
    path, _, query = tail.partition("?")
    userinfo, at, hostpart = netloc.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    if not hostpart and host_required:
        raise ConfigurationError(f"expected {form}, got {shown}")
    try:
        names = hostpart.split(",") if many_hosts else [hostpart]
        hosts = tuple(_host(h, schemes[scheme]) for h in names) if hostpart else ()
    except ValueError as exc:
        raise ConfigurationError(f"invalid {label} URL {shown}: {exc}") from None
    return SplitUrl(scheme, shown, hosts, hostpart, path, query, fragment, user, password)


def _host(raw: str, default_port: int | None) -> Host:
    if raw.startswith("["):  # [v6]:port
        name, close, after = raw[1:].partition("]")
        if not close or not _IPV6.fullmatch(name) or (after and not after.startswith(":")):
            raise ValueError(NETLOC_PROBLEM)
        port = after[1:]
    else:
        name, _, port = raw.partition(":")
        if not name:
            raise ValueError("missing host")
        if ":" in port or not name.isprintable() or _NOT_IN_HOST.search(name):
            raise ValueError(NETLOC_PROBLEM)
    return Host(name.lower(), _port(port, default_port))


def _port(raw: str, default: int | None) -> int | None:
    if not raw:
        return default
    # Not quoted: it may be a piece of a password with an unencoded `/`, `?` or `#`.
    if not (len(raw) <= 5 and raw.isascii() and raw.isdigit() and 0 < int(raw) < 65536):
        raise ValueError(PORT_PROBLEM)
    return int(raw)


def stray_at(url: str) -> bool:
    """Whether `url` has an `@` after its host part (where a URL parser says it ends).

    Most often a password with an unencoded `/`, `?` or `#`: read as is, a piece of the
    password would become the host, the path or a query option, and show up in errors
    and reprs. Refusing the URL is the only reading that cannot leak it.
    """
    rest = url.partition("://")[2]
    end = _END_OF_HOST.search(rest)
    return end is not None and "@" in rest[end.start() :]


def shown_name(name: str) -> str:
    """An unknown option's name for an error message: quoted if it is a plain name."""
    return repr(name) if _PLAIN_NAME.fullmatch(name) else "(name not shown)"


def scrub(error: object, secrets: Iterable[str | None], *, min_length: int = 1) -> str:
    """`error` as text with each secret (as is and percent-encoded) masked.

    `min_length`: shorter secrets are left, where masking them would garble the text.
    """
    text = str(error) or type(error).__name__
    for secret in secrets:
        if secret and len(secret) >= min_length:
            for form in sorted({secret, quote(secret, safe="")}, key=len, reverse=True):
                text = text.replace(form, MASK)
    return text
