"""A throw-away SQS endpoint: moto's stand-alone server (`moto[sqs]`, flask, flask-cors).

moto keeps everything in memory: a restart loses every queue and message (the adapters
create their queues again). It accepts any credentials and signs nothing it checks.
"""

from __future__ import annotations

import http.client
import os
import sys

from outboxkit.devservers.process import ProcessServer

ACCESS_KEY = "outboxkit-test"
SECRET_KEY = "outboxkit-test-secret"
REGION = "us-east-1"


class SqsServer(ProcessServer):
    """`python -m moto.server` on 127.0.0.1, its log in a temporary directory."""

    name = "moto"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, **options: object) -> str:
        """An `sqs://` URL for this server with test credentials and `options`."""
        query = "&".join(
            f"{k}={v}" for k, v in ({"region": REGION, "tls": "false"} | options).items()
        )
        return f"sqs://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:{self.port}?{query}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MOTO_DEFAULT_REGION": REGION, "HOME": str(self.work_dir)}

    def ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/moto-api/")
            connection.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            connection.close()
