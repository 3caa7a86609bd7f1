"""Stop signals as exceptions, so that a run cleans up (kills its simulator tree) instead of dying.

The CLI (:func:`ai4hi_sdk.cli.main.main`) and :func:`ai4hi_sdk.jobs.simulate.run_process_tree`
turn SIGTERM and SIGHUP into :class:`Terminated` in the main thread. Light: no torch, no NVFlare.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: signals that stop a run (and its whole simulator tree) instead of orphaning it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM / SIGHUP so that clean-up (``finally``, the simulator
    tree kill) runs; a BaseException, like KeyboardInterrupt, so ``except Exception`` does not eat it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stop_signals_raise(override: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (main thread only; a
    handler someone else installed is kept unless ``override``). Restores the handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if override or current in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
