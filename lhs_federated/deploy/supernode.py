"""``flower-supernode`` with a shorter idle poll: the site's SuperNode entry point.

Flower 1.42's SuperNode sleeps a hard-coded 3 s whenever it polls the SuperLink
and finds no message, and it polls right after sending each reply, before the
coordinator has sent the next stage. So every stage of every round waits
about 3 s for nothing: 6 of the ~7.5 s of a train-and-evaluate round on
loopback. This entry point runs Flower's own SuperNode unchanged except that
the waits in its message loop (``flwr.supernode.start_client_internal``) are
capped at ``--poll-interval`` seconds (Flower's flwr version is pinned).

    python -m lhs_federated.deploy.supernode --poll-interval 0.5 [flower-supernode args]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from types import SimpleNamespace

from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode


def cap_message_loop_waits(poll_interval: float) -> None:
    """Make the SuperNode's message loop wait at most ``poll_interval`` s per poll."""

    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, poll_interval))

    clock = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    start_client_internal.time = SimpleNamespace(**{**clock, "sleep": sleep})  # type: ignore[attr-defined]


def main() -> None:
    """Parse ``--poll-interval``, then run Flower's SuperNode with the other arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-interval", type=float, required=True)
    known, flower_args = parser.parse_known_args()
    if known.poll_interval <= 0:
        parser.error("--poll-interval must be positive")
    cap_message_loop_waits(known.poll_interval)
    sys.argv = ["flower-supernode", *flower_args]
    os._exit(run_to_exit(flower_supernode))


def run_to_exit(supernode: Callable[[], object]) -> int:
    """Run Flower's SuperNode; return the exit code its end calls for (never 0).

    When Flower's SuperNode gives up reconnecting ("Giving up reconnection
    after 60.00 seconds") its main thread ends with the error, but its Runtime
    API server thread is not a daemon, so the process would stay alive and
    serve nothing, and the site's supervisor would never restart it. The
    caller therefore ends the process with :func:`os._exit` once this returns:
    however Flower's main thread ends, the process ends with it.
    """
    try:
        supernode()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) and exit_.code else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    else:
        code = 1  # Flower's message loop never returns while the node is healthy
    print(f"the SuperNode stopped (exit code {code}); its supervisor restarts it", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    main()
