"""SIGTERM and Ctrl-C (SIGINT) as polite stop requests: the run finishes its step, checkpoints, and exits cleanly.

SLURM (and most schedulers) send SIGTERM before killing a pre-empted or timed-out job, and a researcher at a
terminal presses Ctrl-C; without a handler Python dies at once and the epoch in progress is lost. Inside
``stop_on_signals`` the first signal only sets a flag that the training loop and the final evaluation poll
after every step or batch. A second signal means "now": the process exits at once with status 128 + signal,
keeping the last checkpoint (checkpoints are written atomically, so it is complete).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Callable flag: true once a stop signal arrived; ``signal`` names it (None until then)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 for Ctrl-C, 143 for TERM)."""
        return 128 + int(self.signal or signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS) -> Iterator[StopRequest]:
    """Yield a ``StopRequest`` set by the first of ``signals``; a second one exits at once. Handlers are restored.

    Signal handlers can only be installed from the main thread; elsewhere the flag simply stays false.
    """
    request = StopRequest()

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if request():
            print(f"received {name} again: exiting now; the last checkpoint is kept", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        request.signal = signal.Signals(signum)
        log.warning("received %s: stopping after the current step and saving a checkpoint "
                    "(send it again to exit at once)", name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
