"""The one broker URL reading (`brokers/url.py`, `url_values.py`, `url_options.py`) and
every broker's option table: one split, one truth table, numbers that refuse NaN and
infinity, one unknown-option error.

Pure: no broker client is imported (`test_options_need_no_broker_client` proves it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from outboxkit.brokers.url import SplitUrl, scrub, split_url
from outboxkit.brokers.url_values import BOOL, choice, integer, number
from outboxkit.outbox.errors import ConfigurationError
from tests.support.secrets import SECRET
from tests.support.url_parsers import PARSERS, UrlParser

CLIENTS = ("nats", "aio_pika", "redis", "confluent_kafka", "httpx", "aiobotocore", "pulsar")
URLS = {
    "NATS URL options": "nats://h",
    "RabbitMQ URL options": "amqp://h",
    "Redis URL options": "redis://h",
    "Kafka URL options": "kafka://h",
    "SQS URL options": "sqs://",
    "Pulsar URL options": "pulsar://h",
    "HTTP URL options": "http://h/in",
}


def _split(url: str, *, many_hosts: bool = False) -> SplitUrl:
    return split_url(url, label="X", schemes={"x": 7}, form="x://host", many_hosts=many_hosts)


def test_split_reads_credentials_hosts_ports_path_and_query() -> None:
    parts = split_url(
        f"XS://us%40er:{SECRET}%2F@H1:9,[::1],h3/p/q?a=1&b=%20+c#f",
        label="X",
        schemes={"x": 7, "xs": 8},
        form="x://host",
        many_hosts=True,
    )
    assert (parts.scheme, parts.user, parts.password) == ("xs", "us@er", SECRET + "/")
    assert [str(h) for h in parts.hosts] == ["h1:9", "[::1]:8", "h3:8"]
    assert (parts.path, parts.fragment) == ("/p/q", "f")
    assert [(n, v) for n, v, _ in parts.items()] == [("a", "1"), ("b", "  c")]
    assert SECRET not in parts.shown and SECRET not in repr(parts)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("y://h", "expected x://host"),
        ("x:/h", "expected x://host"),
        ("x://", "expected x://host"),
        (f"x://u:pa/{SECRET}@h", "an '@' after the host"),
        (f"x://u:{SECRET}@[::1", "cannot read the host"),
        (f"x://u:{SECRET}@h:99999", "the port must be"),
        ("x://h:0", "the port must be"),
        ("x://h:65536", "the port must be"),
        ("x://h h", "cannot read the host"),
        ("x://h\n", "cannot read the host"),
    ],
)
def test_split_refuses_without_quoting_a_credential(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as refused:
        _split(url)
    assert SECRET not in str(refused.value)


def test_many_hosts_only_where_allowed() -> None:
    assert [str(h) for h in _split("x://a,b:2", many_hosts=True).hosts] == ["a:7", "b:2"]
    with pytest.raises(ConfigurationError, match="missing host"):
        _split("x://a,,b", many_hosts=True)
    with pytest.raises(ConfigurationError):
        _split("x://a,b")


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On"])
def test_true(raw: str) -> None:
    assert BOOL(raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off"])
def test_false(raw: str) -> None:
    assert BOOL(raw) is False


@pytest.mark.parametrize("raw", ["", " true", "true ", "maybe", "2", "t"])
def test_neither_true_nor_false(raw: str) -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        BOOL(raw)


@pytest.mark.parametrize(
    "raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", " 1", "1 ", "1_000", "٣", "0x10", ""]
)
def test_numbers_refuse_what_is_not_a_plain_finite_decimal(raw: str) -> None:
    with pytest.raises(ValueError):
        number()(raw)
    with pytest.raises(ValueError):
        integer()(raw)


def test_number_bounds() -> None:
    assert number(0)("0") == 0.0 and number(0, above=True)("1e-3") == 0.001
    assert integer(1, 3)("3") == 3 and integer(0)("-0") == 0
    for convert, raw in [(number(0, above=True), "0"), (integer(1, 3), "4"), (number(0), "-1")]:
        with pytest.raises(ValueError, match="expected"):
            convert(raw)
    assert choice("a", "B", any_case=True)("b") == "B"
    with pytest.raises(ValueError, match="one of a, B"):
        choice("a", "B")("b")


def test_scrub_masks_secrets_as_is_and_percent_encoded() -> None:
    text = scrub(f"bad {SECRET}/x and {SECRET}%2Fx", [SECRET + "/x", None])
    assert text == "bad *** and ***"
    assert scrub("a b c", ["a"], min_length=4) == "a b c"


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
def test_every_broker_names_unknown_options_and_lists_the_known(parser: UrlParser) -> None:
    url = URLS[parser.name]
    glue = "&" if "?" in url else "?"
    name = "outboxkit_zz" if url.startswith("http") else "zz"  # others are the endpoint's
    for side in parser.sides:
        with pytest.raises(
            ConfigurationError, match=f"unknown option '{name}'; known: "
        ) as refused:
            side(f"{url}{glue}{name}=1")
        assert all(name in str(refused.value) for name in parser.options)


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
@pytest.mark.parametrize("raw", ["nan", "inf", "1e999", " 1", "%201"])
def test_every_numeric_option_of_every_broker_refuses(parser: UrlParser, raw: str) -> None:
    # Before the shared parser, `timeout=nan` was accepted by two brokers and `inf` by four.
    url = URLS[parser.name]
    glue = "&" if "?" in url else "?"
    numeric = [n for n in parser.options if n.endswith(("timeout", "_wait", "interval", "idle"))]
    assert numeric
    for name in numeric:
        for side in parser.sides:
            with pytest.raises(ConfigurationError, match=name):
                side(f"{url}{glue}{name}={raw}")


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
def test_booleans_are_one_truth_table_everywhere(parser: UrlParser) -> None:
    # Pulsar alone used to strip blanks around a boolean.
    url = URLS[parser.name]
    glue = "&" if "?" in url else "?"
    flags = [n for n in parser.options if n in _BOOLEANS]
    for name in flags:
        for side in parser.sides:
            with pytest.raises(ConfigurationError, match=name):
                side(f"{url}{glue}{name}=%20true")


_BOOLEANS = {
    "create_stream", "verify", "declare", "per_topic", "ssl_check_hostname", "fifo", "create",
    "tls_allow_insecure", "tls_validate_hostname", "outboxkit_accept_v1",
    "outboxkit_insecure_no_auth",
}  # fmt: skip


def test_options_need_no_broker_client() -> None:
    # With every client library made unimportable, each options module still imports and
    # parses: URL and option tests need no broker client installed.
    code = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {CLIENTS!r}:
            raise ImportError("no " + name)
sys.meta_path.insert(0, Refuse())
from tests.support.url_parsers import PARSERS
urls = {URLS!r}
for parser in PARSERS:
    for side in parser.sides:
        parser.use(side(urls[parser.name]))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
