"""A Flower Grid restricted to a study's sites and ordered by site name.

Flower identifies nodes by random integers; a study identifies sites by name.
Strategies sample from ``get_node_ids()`` (with Python's ``random``), so
ordering the ids by site name, and seeding ``random`` from the study, makes
the sampled sites the same on every engine, where the ids differ. Every other
call is passed through unchanged (:class:`GridWrapper`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from lhs_federated.errors import StudyRunError


def addressees(messages: Iterable[Message]) -> dict[str, int]:
    """Message id to destination node, for messages already pushed (Flower sets the ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages}


def replying_node(reply: Message, addressed: Mapping[str, int]) -> int:
    """The node whose outcome ``reply`` is.

    When a node stops sending heartbeats, Flower's SuperLink answers in its
    place with an error reply whose source is the SuperLink itself; that
    reply is still the addressed node's outcome, so it is attributed by the
    message it answers.
    """
    return addressed.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


class GridWrapper(Grid):
    """A Grid that passes every call on to another; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

    def set_run(self, run: Run) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.inner.run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.inner.pull_messages(message_ids)

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class SiteGrid(GridWrapper):
    """Wraps a Grid; node ids come back sorted by the site each belongs to.

    Parameters
    ----------
    grid : Grid
        The engine's grid (in-process, Ray simulation or a SuperLink).
    sites : dict of int to str
        Node id to site name, as learned in the discovery round.
    poll_interval : float
        Seconds between pulls while waiting for replies.
    """

    def __init__(self, grid: Grid, sites: dict[int, str], *, poll_interval: float = 0.25) -> None:
        super().__init__(grid)
        self.sites = dict(sites)
        self.poll_interval = poll_interval
        self._addressed: dict[str, int] = {}

    def get_node_ids(self) -> list[int]:
        """Connected nodes that belong to the study, ordered by site name."""
        connected = set(self.inner.get_node_ids())
        return sorted((n for n in self.sites if n in connected), key=self.sites.__getitem__)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push, then pull replies every ``poll_interval`` s until all arrive or time runs out.

        Flower's deployed Grid sleeps 3 s between pulls, which alone would add
        up to 3 s to every stage of every round; a study polls faster.
        """
        messages = list(messages)
        pending = set(self.inner.push_messages(messages))
        self._addressed.update(addressees(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending:
            arrived = list(self.inner.pull_messages(pending))
            replies += arrived
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        return replies

    def node_of(self, reply: Message) -> int:
        """The node a reply answers for (see :func:`replying_node`)."""
        return replying_node(reply, self._addressed)

    def site_of(self, reply: Message) -> str:
        """The site a reply answers for."""
        node = self.node_of(reply)
        return self.sites.get(node, f"node-{node}")

    def wait_for_sites(self, needed: int, *, timeout: float, stage: str) -> list[int]:
        """Wait until at least ``needed`` study sites are connected.

        Flower's own sampling waits forever; a study waits ``timeout`` seconds
        and then fails, naming the sites that are missing.

        Raises
        ------
        StudyRunError
            If fewer than ``needed`` sites are connected by the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            connected = self.get_node_ids()
            if len(connected) >= needed:
                return connected
            if time.monotonic() >= deadline:
                missing = sorted(set(self.sites.values()) - {self.sites[n] for n in connected})
                raise StudyRunError(
                    f"{stage}: only {len(connected)} of the study's sites are connected, "
                    f"{needed} needed; not connected after {timeout:g} s: {', '.join(missing)}."
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
