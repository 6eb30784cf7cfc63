"""SIGTERM as a polite stop request: the training loop finishes its step, checkpoints, and exits cleanly.

SLURM (and most schedulers) send SIGTERM before killing a pre-empted or timed-out job; without a handler
Python dies at once and the epoch in progress is lost. Inside ``stop_on_signals`` the signal only sets a
flag that the training loop polls after every step.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Callable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM,)) -> Iterator[Callable[[], bool]]:
    """Yield a function that tells whether one of ``signals`` arrived; handlers are restored on exit.

    Signal handlers can only be installed from the main thread; elsewhere the flag simply stays false.
    """
    requested = threading.Event()

    def handler(signum, _frame):
        log.warning("received %s: stopping after the current step and saving a checkpoint", signal.Signals(signum).name)
        requested.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield requested.is_set
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
