"""The site's launcher: claims its SuperNode's tasks and runs each behind the gate.

A site's SuperNode runs in Flower's process-isolation mode with a task-claim
secret, so only this launcher can claim the site's tasks. For each task it
forks a worker from a parent that has already imported Flower, numpy, torch,
scikit-learn and the site's own lhs-federated runtime (never anything from
the study's bundle), which saves the ~2 s a fresh ClientApp process spends on
imports. The worker runs the task the way Flower's ``flwr-clientapp`` does,
composed from Flower's own runner functions, with the site gate between
pulling the task's input and installing the bundle.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from lhs_federated.apps import records
from lhs_federated.apps.site_governance import record_or_withhold, record_task
from lhs_federated.deploy.gate import SiteGate

LOGGER = logging.getLogger("lhs_federated.launcher")

_ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"


def _runtime_client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the SuperNode's Runtime API listens on loopback only
        root_certificates=None,
        interceptors=list(interceptors),
        retry_invoker=make_simple_http_retry_invoker(),
    )


def run_task(address: str, token: str, gate: SiteGate) -> int:
    """Run one claimed task behind the gate; return the process exit code.

    A refused task gets an error reply with code ``SITE_REFUSED`` and the
    reason; the bundle is then never installed and nothing of it imported.
    Every reply that leaves, and every crash, is recorded in the site ledger
    first; a reply that cannot be recorded is withheld (an error reply says why).
    """
    client = _runtime_client(
        address, RuntimeVersionHttpInterceptor("flwr-clientapp"), RuntimeTokenHttpInterceptor(token)
    )
    started = time.monotonic()
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = None
    replied = False
    status, details, exit_code = SubStatus.FAILED, "task failed", 1
    try:
        message, context, run, fab = pull_task_input(client)
        decision = gate.decide(message, context, run, fab)
        if decision.allowed:
            install_from_fab(fab.content, skip_prompt=True)
            client_app = get_load_client_app_fn("", None, True)(
                run.fab_id, run.fab_version, fab.hash_str
            )
            reply = client_app(message=message, context=context)
            status, details, exit_code = SubStatus.COMPLETED, "", 0
        else:
            LOGGER.warning("refused task: %s", decision.refusal)
            reply = Message(
                Error(code=records.SITE_REFUSED, reason=decision.refusal), reply_to=message
            )
            details, exit_code = str(decision.refusal), 0
        # Fail closed: the reply leaves only once the site ledger holds it.
        reply = record_or_withhold(gate.folder, message, reply, approval=decision.approval)
        push_message(client, reply, context)
        replied = True
    except Exception as exc:
        LOGGER.exception("task failed")
        details = f"{type(exc).__name__}: {exc}"
        if message is not None and context is not None and not replied:
            try:
                record_task(gate.folder, message, None, crash=details)
            except Exception:  # the error reply carries no data: it goes either way
                LOGGER.exception("the crash could not be recorded in the site ledger")
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details)
            push_message(client, Message(error, reply_to=message), context)
    finally:
        push_task_output(client, context, status, details)
        heartbeat.stop()
        client.close()
        kind = message.metadata.message_type if message is not None else "unknown"
        LOGGER.info("task %s: %s in %.2f s", kind, status, time.monotonic() - started)
    return exit_code


def preload() -> None:
    """Import what every task needs, once, in the parent the workers fork from.

    Some imports happen on first use rather than at import: torch's optimisers
    import ``torch._dynamo`` (about 2 s) the first time one is built, so one is
    built here.
    """
    import opacus  # noqa: F401 - sample-level DP studies
    import sklearn.metrics  # noqa: F401
    import torch

    import lhs_federated.apps.client_app  # noqa: F401

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    # Flower's runner retries a message object the SuperNode has not stored yet after
    # 1 s, doubling up to 10 s. A forked worker claims its task within milliseconds,
    # usually while the SuperNode is still pulling the message's objects from the
    # SuperLink, so it asks again every 50 ms (up to Flower's overall time limit).
    run_clientapp.pull_and_inflate_object_from_tree = functools.partial(
        pull_and_inflate_object_from_tree,
        initial_backoff=0.05,
        backoff_cap=0.05,
        max_tries_per_object=None,
    )


def run_launcher(
    address: str,
    secret: bytes,
    gate: SiteGate,
    *,
    workers: int = 2,
    poll_interval: float = 0.1,
) -> None:
    """Claim the SuperNode's ClientApp tasks forever, forking one worker per task.

    Parameters
    ----------
    address : str
        The SuperNode's Runtime API (loopback host:port).
    secret : bytes
        The task-claim secret shared with the SuperNode.
    gate : SiteGate
        The site's checks.
    workers : int
        Tasks run at once.
    poll_interval : float
        Seconds between claims when idle.
    """
    preload()
    claims = _runtime_client(
        address,
        RuntimeVersionHttpInterceptor("SuperExec"),
        SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={_ACQUIRE_TASK}),
    )
    running: set[int] = set()

    def stop(signum: int, frame: object) -> None:
        for pid in running:
            os.kill(pid, signal.SIGTERM)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    while True:
        for pid in list(running):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                running.discard(pid)
        if len(running) < workers:
            claim = claims.AcquireTask(request)
            if claim.HasField("task") and claim.token:
                pid = os.fork()
                if pid == 0:  # the worker
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    os._exit(run_task(address, claim.token, gate))
                running.add(pid)
                continue
        time.sleep(poll_interval)
