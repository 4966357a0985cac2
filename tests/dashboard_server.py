"""A dashboard served by uvicorn in a thread, for the dashboard tests."""

from __future__ import annotations

import http.client
import socket
import threading
import time

from lhs_federated.dashboard import serve


class Served:
    """A uvicorn server in a thread; ``get`` sends raw HTTP requests to it."""

    def __init__(self, settings: serve.DashboardSettings) -> None:
        self.settings = settings
        self.server = serve.server(settings, serve.build(settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def get(self, path: str, headers: dict[str, str] | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.settings.port, timeout=30)
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        connection.close()
        return response, body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
