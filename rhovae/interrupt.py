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
import threading
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Callable flag: true once a stop signal arrived; ``signal`` names it (None until then).

    The signal handler only sets the flag; the first poll that sees it logs the warning, from ordinary code: a
    handler that logs or prints can interrupt a write to the same stream and fail with a reentrant-call error.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._announced = False

    def __call__(self) -> bool:
        if self.signal is not None and not self._announced:
            self._announced = True
            log.warning("received %s: stopping after the current step and saving a checkpoint "
                        "(send it again to exit at once)", self.signal.name)
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
        if request.signal is not None:  # raw write and exit: nothing here may touch Python's buffered streams
            os.write(2, f"received {signal.Signals(signum).name} again: exiting now; the last checkpoint is kept\n"
                        .encode())
            os._exit(128 + signum)
        request.signal = signal.Signals(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
