"""What keeps an implementation under test from taking the suite down with it: a deadline per case
(an alarm in the main thread interrupts Python code that loops or sleeps) and a watchdog thread for
code that does not give control back at all (a hang inside native code): it stops the process after
reporting what was graded.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator


class CaseTimeout(BaseException):
    """A case ran past its deadline (a BaseException, so that ``except Exception`` in the code under
    test does not swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise CaseTimeout in the main thread when the body runs longer than ``seconds`` (None: no limit;
    outside the main thread or without SIGALRM, only the watchdog stops a hang)."""
    usable = (
        seconds is not None and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    assert seconds is not None

    def expired(signum: int, frame: object) -> None:
        raise CaseTimeout(f"did not return within {seconds:g} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # again every second if the first is swallowed
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Watchdog:
    """A daemon thread that calls ``on_hang(label)`` when one armed stretch lasts longer than
    ``seconds`` + ``grace`` (the alarm had its chance): ``on_hang`` reports and ends the process."""

    def __init__(self, seconds: float, on_hang: Callable[[str], None], grace: float = 5.0):
        self.limit = seconds + grace
        self.on_hang = on_hang
        self._armed: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="p-rope-conformance-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def armed(self, label: str) -> Iterator[None]:
        with self._lock:
            self._armed = (label, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._armed = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4))
            with self._lock:
                armed = self._armed
            if armed is not None and time.monotonic() - armed[1] > self.limit:
                self.on_hang(armed[0])
                return
