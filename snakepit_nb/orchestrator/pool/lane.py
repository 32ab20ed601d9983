"""The kernel's end of a worker's lane: a small pool of authenticated connections.

Any kernel thread may borrow a connection (:meth:`LaneClient.checkout`), make a call on it
with blocking socket I/O, and give it back. Connections are opened on demand (about 0.2 ms,
the token checked once) and kept; when the worker goes away they are shut down, which wakes
every thread waiting on one.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading

from snakepit_nb.protocol import lane

__all__ = ["LaneClient"]

_CONNECT_TIMEOUT = 5.0
#: Seconds a wait on a connection blocks before it looks at its deadline again.
WAIT_SLICE = 0.1
_MAX_IDLE = 16


class LaneClient:
    """Connections to one worker incarnation's lane (thread-safe)."""

    def __init__(self, address: str, token: str, *, worker_id: str) -> None:
        if not address.startswith("unix:"):
            raise ValueError(f"a lane address is unix:<path>, not {address!r}")
        self.path = address[len("unix:") :]
        self.worker_id = worker_id
        self._token = token.encode()
        self._lock = threading.Lock()
        self._idle: list[lane.LaneSocket] = []
        self._all: set[lane.LaneSocket] = set()
        self._ids = itertools.count(1)
        self._closed = False
        #: Digests of the functions this worker incarnation has received.
        self.functions: set[str] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    def next_id(self) -> int:
        return next(self._ids)

    def checkout(self) -> lane.LaneSocket:
        """An idle connection, or a new one; raises OSError/LaneClosed when there is no lane."""
        with self._lock:
            if self._closed:
                raise lane.LaneClosed(f"the lane to worker {self.worker_id} is closed")
            if self._idle:
                return self._idle.pop()
        conn = self._connect()
        with self._lock:
            if self._closed:
                conn.close()
                raise lane.LaneClosed(f"the lane to worker {self.worker_id} is closed")
            self._all.add(conn)
        return conn

    def checkin(self, conn: lane.LaneSocket) -> None:
        """Give back a connection that is between frames (else :meth:`discard` it)."""
        with self._lock:
            if not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
            self._all.discard(conn)
        conn.close()

    def discard(self, conn: lane.LaneSocket) -> None:
        with self._lock:
            self._all.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
        conn.close()

    def cancel(self, call_id: int) -> None:
        """Ask the worker to stop call ``call_id`` (best effort: it may be gone already)."""
        try:
            conn = self.checkout()
        except (OSError, lane.LaneClosed):
            return
        try:
            conn.send(lane.CANCEL, call_id)
        except (OSError, lane.LaneClosed):
            self.discard(conn)
            return
        self.checkin(conn)

    def close(self) -> None:
        """Shut every connection down: threads waiting on one wake with LaneClosed."""
        with self._lock:
            self._closed = True
            conns, self._all = list(self._all), set()
            self._idle.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _connect(self) -> lane.LaneSocket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
            conn = lane.LaneSocket(sock)
            conn.send(lane.AUTH, 0, [self._token])
            kind, _call_id, _payload, fds = conn.recv()
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.close(fd)
        except BaseException:
            sock.close()
            raise
        if kind != lane.AUTH_OK:
            sock.close()
            raise lane.LaneClosed(f"worker {self.worker_id} refused the lane connection")
        # Waits wake every slice, so a caller notices its deadline and a kernel interrupt.
        sock.settimeout(WAIT_SLICE)
        return conn
