"""The worker's end of the lane: a private unix socket, one thread per connection.

Each kernel thread that calls this worker holds a connection of its own; the connection's
thread here reads a call, runs it (a sync tool right in this thread), and writes the answer.
The worker's event loop is not on this path: it stays free for heartbeats, cancels, streams
and async tools. The first frame of a connection must carry the runtime token; a connection
that does not is closed before anything it sent is unpickled.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import lane, pickling
from snakepit_nb.worker.calls.batches import error_answer, pickle_answer

if TYPE_CHECKING:
    from snakepit_nb.worker.calls.batches import Answer
    from snakepit_nb.worker.calls.direct import DirectRunner

__all__ = ["LaneServer"]

log = logging.getLogger("snakepit_nb.worker")

_ids = itertools.count(1)


class LaneServer:
    """Accepts lane connections on ``path`` and serves each on a thread of its own."""

    def __init__(self, path: str, token: str, runner: DirectRunner) -> None:
        self.path = path
        self._token = token.encode()
        self._runner = runner
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a previous worker with this id
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created 0600: ours alone
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, name="snakepit-lane-accept", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # ------------------------------------------------------------------ connections

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and not self._closed:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._connections.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"snakepit-lane-{next(_ids)}", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        link = lane.LaneSocket(conn)
        try:
            if not self._authenticate(link):
                return
            while not self._closed:
                kind, call_id, payload, fds = link.recv()
                if kind == lane.CANCEL:
                    self._runner.cancel(call_id)
                    continue
                answer = self._answer(kind, call_id, payload, fds)
                self._reply(link, call_id, answer)
                # Not kept until the next call: they may pin a large segment's mapping.
                del answer, payload
        except lane.LaneClosed:
            pass
        except Exception:
            log.exception("lane connection failed")
        finally:
            with self._lock:
                self._connections.discard(conn)
            link.close()

    def _authenticate(self, link: lane.LaneSocket) -> bool:
        kind, _call_id, payload, fds = link.recv()
        for fd in fds:
            os.close(fd)
        if kind != lane.AUTH or not hmac.compare_digest(bytes(payload), self._token):
            log.warning("refused a lane connection without the runtime token")
            return False
        link.send(lane.AUTH_OK, 0)
        return True

    def _answer(self, kind: int, call_id: int, payload: memoryview, fds: list[int]) -> Answer:
        try:
            stream, buffers = lane.unpack_message(payload, fds)
            envelope = pickling.loads(stream, buffers, what="a call from the kernel")
        except Exception as exc:
            return error_answer(InvalidArgumentError(f"the worker could not read the call: {exc}"))
        if kind == lane.CALL:
            session_id, target, args, kwargs, metadata, variables = envelope
            return self._runner.call(
                session_id, target, args, kwargs, metadata, call_id, variables=variables
            )
        if kind == lane.BATCH:
            session_id, target, items, style, metadata = envelope
            return self._runner.batch(session_id, target, items, style, metadata, call_id)
        return error_answer(InvalidArgumentError(f"unknown lane frame kind {kind}"))

    def _reply(self, link: lane.LaneSocket, call_id: int, answer: Answer) -> None:
        message = pickle_answer(answer, what="the tool's result")
        parts, fds = lane.pack_message(message, shared=True)
        try:
            link.send(lane.REPLY, call_id, parts, fds)
        finally:
            for fd in fds:
                os.close(fd)
