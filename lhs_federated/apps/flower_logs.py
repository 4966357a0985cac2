"""Each of Flower's log lines printed once, wherever a study runs from.

Flower's logger (``flwr``) has a console handler of its own *and* passes its
records on to the root logger. Where the root logger has handlers too (a
notebook's ``logging.basicConfig``, a test's log capture, the CLI's Rich
handler), every Flower line therefore prints twice. While a study runs in
this process, Flower's console handler steps aside in that case; without root
handlers it stays, and remains the one place Flower's lines print. Done at
call time, never at import (importing this package configures no logging).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def flower_lines_once() -> Iterator[None]:
    """Within the block, Flower's lines go through the root logger's handlers alone."""
    from flwr.common.logger import FLOWER_LOGGER, console_handler

    if not logging.getLogger().handlers or console_handler not in FLOWER_LOGGER.handlers:
        yield
        return
    FLOWER_LOGGER.removeHandler(console_handler)
    try:
        yield
    finally:
        FLOWER_LOGGER.addHandler(console_handler)
