"""The Ray engine's Grid: the simulated sites' ClientApps in Ray actors, one batch per actor.

The ServerApp runs in this process on :class:`RayGrid`, as it does on the
in-process engine; each Ray actor (:class:`SiteWorker`) is an
:class:`~lhs_federated.apps.inprocess.InProcessGrid` serving a fixed share of
the sites (node ``k`` always goes to actor ``k mod A``, which keeps that
node's :class:`~flwr.app.Context`). A stage (one round's training or
evaluation) is one Ray call per actor carrying all of its sites' messages, so
the cost of Ray is per actor and stage, not per site.

Flower's simulation engine was the Ray engine before and is not used here: it
polls its message store for every node every 0.1 s, and each poll scans every
stored message (``InMemoryLinkState.get_message_ins``), about a million checks
per poll at 1000 sites in the coordinator's process; and it sends the ClientApp
and the node's Context through Ray with every message.

Each actor takes the sites the coordinator prepared (one object in Ray's
object store, not each actor generating and validating every site again), and
imports what PyTorch's optimisers import on first use while the coordinator
starts the study. Its sites' ledger records of a batch are made durable
together when the batch ends, on the actor's machine, before the replies
leave: a crash loses at most the stage in progress, which a resumed run
repeats.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Sequence
from uuid import uuid4

import ray
from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from lhs_federated.apps.inprocess import InProcessGrid
from lhs_federated.data.sources import SiteData, adopt_prepared_sites

#: Longest a pull waits for a stage's batches before returning what has arrived
#: (the caller then checks its own deadline and pulls again).
PULL_WAIT_SECONDS = 5.0


class SiteWorker:
    """One Ray actor: the site ClientApp serving its share of the simulated sites.

    Parameters
    ----------
    n_nodes : int
        Number of simulated sites in the run (every actor numbers them alike).
    run_id : int
        The run's id.
    study_hash : str
        The study whose ``sites`` these are.
    sites : sequence of SiteData
        Every simulated site's prepared data, as the coordinator loaded them.
    batch_durability : bool
        Make a batch's ledger records durable together (see
        :class:`~lhs_federated.apps.inprocess.InProcessGrid`).
    """

    def __init__(
        self,
        n_nodes: int,
        run_id: int,
        study_hash: str,
        sites: Sequence[SiteData],
        batch_durability: bool,
    ) -> None:
        from lhs_federated.apps import client_app

        adopt_prepared_sites(study_hash, sites)
        self._grid = InProcessGrid(
            client_app.app, n_nodes, run_id=run_id, batch_durability=batch_durability
        )
        _warm_up_optimiser()

    def deliver_all(self, messages: list[Message]) -> list[Message]:
        """The ClientApp's replies to ``messages``, in their order."""
        return self._grid.deliver_all(messages)


def _warm_up_optimiser() -> None:
    """Create and step one optimiser, so that PyTorch's lazy imports happen now.

    ``torch.optim`` imports ``torch._dynamo`` on an optimiser's first use: one
    to a few seconds of imports per process (two thirds of an actor's time in
    a 100-site study when it happened inside the first round). Done when the
    actor starts, it overlaps the coordinator's start of the study.
    """
    import torch

    weight = torch.zeros(1, requires_grad=True)
    weight.grad = torch.zeros(1)
    torch.optim.SGD([weight], lr=0.0).step()


RemoteSiteWorker = ray.remote(SiteWorker)


class RayGrid(InProcessGrid):
    """A Grid whose nodes are simulated sites served by :class:`SiteWorker` actors.

    Messages are sent to the actors when pushed; a pull returns the replies of
    the batches that have finished (waiting up to :data:`PULL_WAIT_SECONDS`).

    Parameters
    ----------
    client_app : ClientApp
        The site ClientApp (the actors import the same one).
    n_nodes : int
        Number of simulated sites; node ``k`` gets ``partition-id`` ``k``.
    run_id : int
        The run's id.
    study_hash : str
        The study the sites were prepared for.
    sites : sequence of SiteData
        Every simulated site's prepared data.
    n_actors : int
        Number of actors.
    cpus_per_actor : float
        Ray CPU resources each actor holds.
    batch_durability : bool
        Make each batch's ledger records durable together (the default).
    """

    def __init__(
        self,
        client_app: ClientApp,
        n_nodes: int,
        *,
        run_id: int,
        study_hash: str,
        sites: Sequence[SiteData],
        n_actors: int,
        cpus_per_actor: float,
        batch_durability: bool = True,
    ) -> None:
        super().__init__(client_app, n_nodes, run_id=run_id, batch_durability=batch_durability)
        shared_sites = ray.put(list(sites))
        self._actors = [
            RemoteSiteWorker.options(num_cpus=cpus_per_actor).remote(
                n_nodes, run_id, study_hash, shared_sites, batch_durability
            )
            for _ in range(max(1, min(n_actors, n_nodes)))
        ]
        self._actor_index = {
            node: k % len(self._actors) for k, node in enumerate(self.get_node_ids())
        }
        self._in_flight: dict[ray.ObjectRef, list[Message]] = {}
        self._arrived: dict[str, Message] = {}

    @property
    def n_actors(self) -> int:
        """Number of actors serving the sites."""
        return len(self._actors)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Give each message an id and send it, with its actor's others, to that actor."""
        messages = list(messages)
        ids = super().push_messages(messages)
        batches: dict[int, list[Message]] = {}
        for message_id in ids:
            message = self._pending.pop(message_id)
            index = self._actor_index.get(message.metadata.dst_node_id, 0)
            batches.setdefault(index, []).append(message)
        for index, batch in batches.items():
            self._in_flight[self._actors[index].deliver_all.remote(batch)] = batch
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies that have arrived to ``message_ids``, in their order."""
        wanted = list(message_ids)
        if any(i not in self._arrived for i in wanted):
            self._collect(PULL_WAIT_SECONDS)
        return [self._arrived.pop(i) for i in wanted if i in self._arrived]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push, then collect replies until all arrive or ``timeout`` seconds pass."""
        pending = self.push_messages(messages)
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending:
            arrived = self.pull_messages(pending)
            replies += arrived
            answered = {reply.metadata.reply_to_message_id for reply in arrived}
            pending = [i for i in pending if i not in answered]
            if not self._in_flight or time.monotonic() >= deadline:
                break
        return replies

    def _collect(self, wait: float) -> None:
        """Keep the replies of the batches that finish within ``wait`` seconds."""
        if not self._in_flight:
            return
        ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=wait)
        for ref in ready:
            for reply in _replies(ref, self._in_flight.pop(ref)):
                self._arrived[reply.metadata.reply_to_message_id] = reply

    def close(self) -> None:
        """Stop the actors."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


def _replies(ref: ray.ObjectRef, batch: list[Message]) -> list[Message]:
    """A finished batch's replies; error replies naming the cause if its actor failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as failure:
        reason = f"Ray actor failed: {type(failure).__name__}: {failure}\n"
        reason += traceback.format_exc(limit=3)
        replies = []
        for message in batch:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
            )
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            replies.append(reply)
        return replies
