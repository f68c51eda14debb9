"""A stop request that a sleeping agent notices at once.

While armed, the agent sleeps in ``select`` on one end of a socket pair and
:meth:`StopFlag.set` writes a byte to the other end. Setting it takes no lock,
so it is safe from any thread and from a signal handler (a ``threading.Event``
is not: its lock may be held by the very code the handler interrupted). While
signals are handled, the socket is also the interpreter's wakeup fd: a signal
wakes the sleep even where a Python handler alone would not run until it ends
(Windows).
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

Handler = Callable[[int, FrameType | None], None]


class StopFlag:
    def __init__(self) -> None:
        self.is_set = False
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def set(self) -> None:
        self.is_set = True
        pair = self._pair
        if pair is not None:
            with contextlib.suppress(OSError):  # full (already woken) or just closed
                pair[1].send(b"\0")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if woken; ``True`` if stop was requested."""
        pair = self._pair
        if self.is_set or seconds <= 0:
            return self.is_set
        if pair is None:
            time.sleep(seconds)  # not armed: nothing could wake it anyway
        elif select.select([pair[0]], [], [], seconds)[0]:
            with contextlib.suppress(OSError):  # drained
                while pair[0].recv(4096):
                    pass
        return self.is_set

    @contextlib.contextmanager
    def armed(self, handler: Handler | None = None, *signums: int) -> Iterator[None]:
        """Let :meth:`set` wake :meth:`wait` meanwhile, and route ``signums`` to
        ``handler`` (in the main thread; elsewhere signals are left alone)."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._pair = (reader, writer)
        try:
            if handler is None or threading.current_thread() is not threading.main_thread():
                yield
            else:
                with _signals(handler, signums, writer):
                    yield
        finally:
            self._pair = None
            reader.close()
            writer.close()


@contextlib.contextmanager
def _signals(handler: Handler, signums: tuple[int, ...], wakeup: socket.socket) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    old_fd = signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, old in previous.items():
            # None: the old handler was not set from Python; the default is all we know.
            signal.signal(signum, signal.SIG_DFL if old is None else old)
