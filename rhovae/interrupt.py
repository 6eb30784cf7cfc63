"""SIGTERM and Ctrl-C (SIGINT) as polite stop requests: the run finishes its step, checkpoints, and exits cleanly.

SLURM (and most schedulers) send SIGTERM before killing a pre-empted or timed-out job, and a researcher at a
terminal presses Ctrl-C; without a handler Python dies at once and the epoch in progress is lost. Inside
``stop_on_signals`` the first signal only sets a flag that the training loop and the final evaluation poll
after every step or batch. A second signal means "now": the process exits at once with status 128 + signal,
keeping the last checkpoint (checkpoints are written atomically, so it is complete).

A sweep stops as one (``sweep_stop``): its process and its jobs (in-process, or the joblib launcher's worker
processes) share a stop file named by an environment variable they inherit. The first signal the sweep's process
gets creates it, and so does a job that a signal of its own stopped; every running job polls it as it polls its own
signal, and a job that starts once it exists does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SWEEP_STOP_ENV = "RHOVAE_SWEEP_STOP"  # the path of a sweep's stop file; the file exists once the sweep is stopped


def sweep_stop_signal() -> signal.Signals | None:
    """The signal that stopped the sweep this process belongs to, or None (not stopped, or not in a sweep)."""
    path = os.environ.get(SWEEP_STOP_ENV)
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    return signal.Signals(int(text)) if text.isdigit() else signal.SIGTERM


def request_sweep_stop(signum: int) -> None:
    """Stop the sweep this process belongs to (nothing outside a sweep); raw system calls, safe in a handler."""
    path = os.environ.get(SWEEP_STOP_ENV)
    if not path:
        return
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, str(int(signum)).encode())
        os.close(fd)


class StopRequest:
    """Callable flag: true once a stop signal arrived; ``signal`` names it (None until then).

    The signal handler only sets the flag; the first poll that sees it logs the warning, from ordinary code: a
    handler that logs or prints can interrupt a write to the same stream and fail with a reentrant-call error.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._announced = False

    def __call__(self) -> bool:
        if self.signal is None:
            self.signal = sweep_stop_signal()  # the sweep was stopped through another of its processes
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

    with handling(signals, handler):
        yield request


@contextlib.contextmanager
def handling(signals, handler) -> Iterator[None]:
    """``handler`` for ``signals`` inside the block, the previous handlers restored after. Handlers can only be
    installed from the main thread; elsewhere nothing is installed."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _sweep_stopping_handler(what: str):
    """A handler whose first SIGINT or SIGTERM stops the sweep (``request_sweep_stop``) and says so, and whose second
    exits at once; raw system calls only, safe in a handler."""
    received = []

    def handler(signum, _frame):
        if received:
            os.write(2, f"received {signal.Signals(signum).name} again: exiting now; {what}\n".encode())
            os._exit(128 + signum)
        received.append(signum)
        os.write(2, f"received {signal.Signals(signum).name}: every running job saves its position, no other job "
                    "starts (send it again to exit at once)\n".encode())
        request_sweep_stop(signum)

    return handler


@contextlib.contextmanager
def sweep_stop() -> Iterator[Path]:
    """For the process that launches a sweep's jobs: the shared stop file's path (exported in ``SWEEP_STOP_ENV``),
    and handlers that turn this process's first SIGINT or SIGTERM into that file (so running jobs save and queued
    ones start nothing, and the launcher waits for them) and a second one into an exit at once. Yields the path; the
    file is removed on the way out, after the caller has read ``sweep_stop_signal``."""
    path = Path(tempfile.gettempdir()) / f"rhovae-sweep-stop-{os.getpid()}-{os.urandom(4).hex()}"
    os.environ[SWEEP_STOP_ENV] = str(path)
    try:
        with handling(STOP_SIGNALS, _sweep_stopping_handler("each job keeps its last checkpoint")):
            yield path
    finally:
        os.environ.pop(SWEEP_STOP_ENV, None)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def sweep_job() -> Iterator[None]:
    """For one job of a sweep, around all of it: a signal that arrives outside training (while the job starts, or
    writes its pictures and summary after its test) stops the sweep instead of raising ``KeyboardInterrupt`` halfway
    through a write; the job then ends as it would have. Training installs its own handler inside
    (``stop_on_signals``), which also sees a sweep stopped this way."""
    with handling(STOP_SIGNALS, _sweep_stopping_handler("this job keeps its last checkpoint")):
        yield
