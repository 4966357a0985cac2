"""A malicious site for the hardening tests: the real ClientApp, one site's replies rewritten.

The tampering sits outside every site mod, as a modified copy of the site's
code would: the site's own egress guard and ledger see the honest reply, the
coordinator sees the rewritten one. Each round's rewrite is chosen by a
callable, so one run can try a different attack in every round.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from lhs_federated.apps import client_app

Tamper = Callable[[Message, int], Message | None]


def tampering_client(site: int, tamper: Tamper, *, message_type: str = "train") -> ClientApp:
    """The real ClientApp whose ``message_type`` replies at partition ``site`` pass ``tamper``.

    ``tamper(reply, server_round)`` returns the reply to send instead, or
    ``None`` to send the honest one.
    """

    def tamper_mod(message: Message, context: Context, call_next) -> Message:
        reply = call_next(message, context)
        if (
            context.node_config.get("partition-id") == site
            and message.metadata.message_type.split(".")[0] == message_type
            and not reply.has_error()
        ):
            server_round = int(message.content["config"]["server-round"])
            return tamper(reply, server_round) or reply
        return reply

    app = ClientApp(mods=[tamper_mod, *client_app.SITE_MODS])
    app.query(client_app.CLOSE_ACTION)(client_app.acknowledge_close)
    app.query()(client_app.describe)
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    return app
