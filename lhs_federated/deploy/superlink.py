"""``flower-superlink`` whose Control and Runtime APIs answer only the coordinator's own host.

Flower 1.42 serves its Fleet API (what SuperNodes call), its Control API (``flwr
run``, ``flwr supernode register``, ``flwr stop``) and its Runtime API (what
the ServerApp calls) on one HTTPS port, and the open-source Control API has no
user authentication: anyone who reached the port could register a SuperNode
key and take part in studies. This entry point runs Flower's SuperLink
unchanged except that its ASGI app is wrapped in :class:`LoopbackOnly`: a
request to ``/v1/control/`` or ``/v1/runtime/`` from any address other than the
machine itself, or one that a proxy forwarded (an ``X-Forwarded-For`` or
``Forwarded`` header), gets HTTP 403. Sites reach only the Fleet API.

    python -m lhs_federated.deploy.superlink [flower-superlink args]
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import SimpleNamespace
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

#: Path prefixes only the coordinator's own host may call.
LOCAL_ONLY = ("/v1/control", "/v1/runtime")
_FORWARDED = {b"x-forwarded-for", b"forwarded", b"x-real-ip"}


def is_local_request(scope: Scope, own_hosts: frozenset[str] = frozenset()) -> bool:
    """Whether a request comes straight from this machine, not through a proxy.

    From this machine: a loopback address, or one of ``own_hosts`` (the address
    the SuperLink listens on; a remote peer cannot connect from it).
    """
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    headers = {name.lower() for name, _ in scope.get("headers", [])}
    local = address.is_loopback or str(address) in own_hosts
    return local and not headers & _FORWARDED


class LoopbackOnly:
    """ASGI middleware: Control and Runtime API requests from elsewhere get 403.

    Parameters
    ----------
    app : ASGI app
        Flower's SuperLink app.
    own_hosts : iterable of str
        This machine's addresses besides loopback (the SuperLink's ``--host``).
    """

    def __init__(self, app: ASGIApp, own_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.own_hosts = frozenset(own_hosts)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """Refuse a non-local request to a local-only path; pass everything else on."""
        path = str(scope.get("path", ""))
        if (
            scope.get("type") == "http"
            and path.startswith(LOCAL_ONLY)
            and not is_local_request(scope, self.own_hosts)
        ):
            body = json.dumps(
                {"detail": "the Control and Runtime APIs answer only the coordinator's host"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def main() -> None:
    """Run Flower's SuperLink with its app wrapped in :class:`LoopbackOnly`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    known, _ = parser.parse_known_args()
    # The module (its package re-exports the function under the same name).
    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")
    uvicorn = flower_superlink.uvicorn

    def run(app: Any, **kwargs: Any) -> None:
        uvicorn.run(LoopbackOnly(app, own_hosts={known.host}), **kwargs)

    flower_superlink.uvicorn = SimpleNamespace(**{**vars(uvicorn), "run": run})  # type: ignore[attr-defined]
    sys.argv = ["flower-superlink", *sys.argv[1:]]
    sys.exit(flower_superlink.flower_superlink())


if __name__ == "__main__":
    main()
