"""A malicious site and a malicious coordinator for the hardening tests.

The malicious site is the real ClientApp with one site's replies rewritten
outside every site mod, as a modified copy of the site's code would: the site's
own egress guard and ledger see the honest reply, the coordinator sees the
rewritten one. The malicious coordinator is the real coordinator loop
(:func:`run_study`) whose messages a Grid rewrites below its own ledger, the way
a modified ServerApp would; the sites are the real ClientApp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from lhs_federated.apps import client_app, records
from lhs_federated.apps.federation import run_study
from lhs_federated.apps.inprocess import InProcessGrid
from lhs_federated.apps.site_grid import GridWrapper
from lhs_federated.study import Study

Tamper = Callable[[Message, int], Message | None]


def tampering_client(site: int, tamper: Tamper, *, message_type: str = "train") -> ClientApp:
    """The real ClientApp whose ``message_type`` replies at partition ``site`` pass ``tamper``.

    ``tamper(reply, server_round)`` returns the reply to send instead, or
    ``None`` to send the honest one (``server_round`` is 0 for discovery).
    """

    def tamper_mod(message: Message, context: Context, call_next) -> Message:
        reply = call_next(message, context)
        if (
            context.node_config.get("partition-id") == site
            and message.metadata.message_type.split(".")[0] == message_type
            and not reply.has_error()
        ):
            server_round = int(message.content["config"].get("server-round", 0))
            return tamper(reply, server_round) or reply
        return reply

    return site_app_below(tamper_mod)


def site_app_below(outer_mod) -> ClientApp:
    """The real site handlers and mods, with ``outer_mod`` outside every site mod."""
    app = ClientApp(mods=[outer_mod, *client_app.SITE_MODS])
    app.query(client_app.CLOSE_ACTION)(client_app.acknowledge_close)
    app.query()(client_app.describe)
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    return app


class TamperingGrid(GridWrapper):
    """A modified coordinator: its messages are rewritten after its own ledger saw them.

    ``tamper(message)`` edits each message in place just before it is pushed
    to the sites, below the coordinator's audit (which records the honest one).
    """

    def __init__(self, grid: Grid, tamper: Callable[[Message], None]) -> None:
        super().__init__(grid)
        self.tamper = tamper

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            self.tamper(message)
        return self.inner.push_messages(messages)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def malicious_coordinator(
    study: Study,
    tamper: Callable[[Message], None],
    out_dir: Path,
    *,
    n_sites: int = 3,
    **run_options,
) -> dict:
    """Run ``study`` with the real coordinator loop whose messages ``tamper`` rewrites.

    The sites are the real ClientApp on the in-process engine (node ids 1000,
    1001, ... for partitions 0, 1, ...); ``run_options`` go to :func:`run_study`.
    """
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 77, 0, 1
    grid = TamperingGrid(InProcessGrid(client_app.app, n_sites, run_id=77), tamper)
    return run_study(grid, study, out_dir, engine="inprocess", **run_options)


def carry_study(approved: Study) -> Callable[[Message], None]:
    """A tamper that puts the approved study in every message (the coordinator runs another)."""

    def tamper(message: Message) -> None:
        config = message.content[records.CONFIG]
        config[records.STUDY] = approved.to_json()
        config[records.STUDY_HASH] = approved.hash

    return tamper
