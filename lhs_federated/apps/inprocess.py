"""The in-process engine: a Flower Grid that calls the ClientApp directly.

For researchers' quick runs there is no reason to start Ray or a SuperLink:
this Grid delivers each message to the real ClientApp object in the same
process, with one persistent :class:`~flwr.app.Context` per simulated node
(``partition-id`` in its node config, as Flower's simulation engine sets it).
Messages are copied on delivery, as a transport would, so a ClientApp can never
see or change another site's message (:func:`copy_message`). The ServerApp and ClientApp code is
exactly what runs on the other engines.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Iterable
from types import FunctionType
from typing import Any
from uuid import uuid4

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from lhs_federated.apps.client_site import NUM_PARTITIONS, PARTITION_ID
from lhs_federated.governance.durability import batched_durability, immediate_durability


class InProcessGrid(Grid):
    """A Grid whose nodes are simulated sites served by ``client_app`` in this process.

    Parameters
    ----------
    client_app : ClientApp
        The ClientApp every node runs.
    n_nodes : int
        Number of simulated sites; node ``k`` gets ``partition-id`` ``k``.
    run_id : int
        The run's id, as Flower would assign it.
    batch_durability : bool
        Make the sites' ledger records of each stage durable together (the
        default); ``False`` syncs every record as it is written.
    """

    def __init__(
        self, client_app: ClientApp, n_nodes: int, *, run_id: int, batch_durability: bool = True
    ) -> None:
        self._client_app = client_app
        self._batch_durability = batch_durability
        self._run = Run.create_empty(run_id)
        self._contexts = {
            1000 + k: Context(
                run_id=run_id,
                node_id=1000 + k,
                node_config={PARTITION_ID: k, NUM_PARTITIONS: n_nodes},
                state=RecordDict(),
                run_config={},
            )
            for k in range(n_nodes)
        }
        self._pending: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:  # noqa: D102
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages, giving each an id as the SuperLink would."""
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Run the ClientApp on each queued message and return the replies."""
        return self.deliver_all([self._pending.pop(i) for i in message_ids if i in self._pending])

    def deliver_all(self, messages: list[Message]) -> list[Message]:
        """The ClientApp's replies to ``messages`` (pushed already), in their order.

        The simulated sites' ledger records of one stage (one round's training
        or evaluation) are made durable together when the stage ends (see
        :func:`~lhs_federated.governance.durability.batched_durability`): the same
        records, one disk sync instead of one per site; a machine crash loses
        at most the stage in progress, which a resumed run repeats.
        """
        with batched_durability() if self._batch_durability else immediate_durability():
            return [self._deliver(message) for message in messages]

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(
                Error(
                    code=ErrorCode.NODE_UNAVAILABLE,
                    reason=f"no node {message.metadata.dst_node_id}",
                ),
                reply_to=message,
            )
        delivered = copy_message(message)
        try:
            reply = self._client_app(delivered, context)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=delivered
            )
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply


def copy_message(message: Message) -> Message:
    """A copy of ``message`` that shares nothing mutable with it, as a transport delivers.

    What ``copy.deepcopy`` makes, built directly: Flower's message and record
    classes are plain attribute holders (no ``__slots__``, no copy protocol of
    their own) whose leaves are numbers, strings and bytes (an array's data),
    so a new object per message, record and array with copied dicts and lists
    is a deep copy. ``deepcopy``'s generic reduce-and-memo walk costs several
    times more, paid per site per message. Anything else a message might hold
    takes ``deepcopy``.
    """
    return _copied(message)


#: Flower's classes a message is made of (see :func:`copy_message`).
_MESSAGE_CLASSES = frozenset(
    {Message, Metadata, RecordDict, ArrayRecord, ConfigRecord, MetricRecord, Array}
)
#: Values shared rather than copied: immutable (functions: the records' type checks).
_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None), FunctionType})


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is list:
        return [_copied(item) for item in value]
    if kind is tuple:
        return tuple(_copied(item) for item in value)
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind in _MESSAGE_CLASSES:
        copied = object.__new__(kind)
        copied.__dict__.update({name: _copied(item) for name, item in vars(value).items()})
        return copied
    return copy.deepcopy(value)
