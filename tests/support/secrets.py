"""DSNs and broker URLs with a credential planted in every place one hides, for the tests
that look for that credential in errors, logs, reprs, /readyz and `outboxkit status`.

Every credential contains `SECRET`; a test passes only if `SECRET` shows nowhere.
"""

from __future__ import annotations

import re
from urllib.parse import quote

SECRET = "S3cr3t-Mark"

# How a password may be written in a URL's userinfo: as is, or holding a character that
# ends the userinfo for a naive parser (unencoded), or percent-encoded.
PASSWORDS: dict[str, str] = {
    "plain": SECRET,
    "hash": f"pa#{SECRET}",
    "question": f"pa?{SECRET}",
    "at": f"pa@{SECRET}",
    "percent": f"pa%{SECRET}",
    "slash": f"pa/{SECRET}",
    "colon": f"pa:{SECRET}",
    "encoded": quote(f"p@ss/#?{SECRET}", safe=""),
}

# Query options that carry a credential in someone's URL (webhooks, presigned URLs, ...).
SECRET_QUERY_NAMES = (
    "code",
    "key",
    "apikey",
    "api_key",
    "token",
    "sig",
    "X-Amz-Signature",
    "password",
    "sslpassword",
    "zq_unknown_name",
)

# One URL per scheme, `{pw}` where the password goes (`{token}` for a bare token).
BROKER_URLS: dict[str, str] = {
    "nats": "nats://app:{pw}@127.0.0.1:4222?stream=S",
    "nats-token": "nats://{pw}@127.0.0.1:4222",
    "amqp": "amqp://app:{pw}@127.0.0.1:5672/vh",
    "redis": "redis://:{pw}@127.0.0.1:6379/0",
    "kafka": "kafka://app:{pw}@127.0.0.1:9092",
    "sqs": "sqs://AKIDEXAMPLE:{pw}@127.0.0.1:4566?tls=false",
    "pulsar": "pulsar://app:{pw}@127.0.0.1:6650",
    "pulsar-token": "pulsar://:{pw}@127.0.0.1:6650",
    "http": "http://app:{pw}@127.0.0.1:8080/in",
}

KEYWORD_DSNS: dict[str, str] = {
    "quoted-with-spaces-and-url": f"host=db user=app password='pa ss://h/{SECRET}' dbname=x",
    "escaped": f"host=db password=pa\\ ss\\'{SECRET}",
    "quoted-escapes": f"host=db password='it\\'s {SECRET}' dbname=x",
    "plain": f"host=db password={SECRET}",
    "sslpassword": f"host=db sslpassword={SECRET} sslkey=/k.pem",
    "passfile": f"host=db passfile=/run/{SECRET}",
    "options": f"host=db options='-c app.key={SECRET}'",
    "unparseable": f"host=db password={SECRET} bogus",
    "unterminated": f"host=db password='{SECRET}",
}


def broker_urls() -> dict[str, str]:
    """Every broker URL form: each scheme with each password, and with each query key."""
    urls: dict[str, str] = {}
    for scheme, template in BROKER_URLS.items():
        for form, password in PASSWORDS.items():
            urls[f"{scheme}-{form}"] = template.format(pw=password)
        plain = re.sub(r"//[^@]*@", "//", template)
        for name in SECRET_QUERY_NAMES:
            glue = "&" if "?" in plain else "?"
            urls[f"{scheme}-query-{name}"] = f"{plain}{glue}{name}={SECRET}"
    return urls


def postgres_dsns(host: str = "db", port: int = 5432) -> dict[str, str]:
    """Every PostgreSQL DSN form: URL passwords, query passwords, keyword DSNs."""
    dsns = {
        f"url-{form}": f"postgresql://app:{pw}@{host}:{port}/orders"
        for form, pw in PASSWORDS.items()
    }
    dsns["url-query-password"] = f"postgresql://app@{host}:{port}/orders?password={SECRET}"
    dsns["url-query-sslpassword"] = f"postgres://{host}:{port}/orders?sslpassword={SECRET}"
    dsns["url-unparseable"] = f"postgresql://app:{SECRET}@[::1/orders"
    target = f"host={host} port={port}"
    for form, dsn in KEYWORD_DSNS.items():
        dsns[f"keywords-{form}"] = dsn.replace("host=db", target)
    return dsns
