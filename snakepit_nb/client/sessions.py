"""Sessions as the user holds them: ``AsyncSession`` (all logic) and ``Session`` (blocking).

A session names a scope on the orchestrator: its variables, its worker affinity, its call
statistics. ``AsyncSession`` methods run on the snakepit loop thread whatever loop awaits them;
``Session`` hands each call to that thread and blocks (one line per method).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.client.blocking import blocking_runner, call_label, caller_errors
from snakepit_nb.client.futures import SessionFuture
from snakepit_nb.client.mapping import ProgressiveMap
from snakepit_nb.client.output import caller_sink
from snakepit_nb.client.streams import AsyncStream, ScopedStream, Stream, on_loop
from snakepit_nb.orchestrator.sessions import SessionInfo

if TYPE_CHECKING:
    from snakepit_nb._loop import LoopThread
    from snakepit_nb.client.async_variables import AsyncVariables
    from snakepit_nb.client.variables import Variables
    from snakepit_nb.orchestrator.output import OutputSink
    from snakepit_nb.orchestrator.pool.calls.direct import Target
    from snakepit_nb.orchestrator.routing import BatchStream
    from snakepit_nb.orchestrator.service import Service

__all__ = ["AsyncSession", "Session"]

# Keyword arguments of ``call``/``stream`` that are not passed to the tool.
RESERVED = ("_timeout",)


def _map_items(
    tool: Target, items: Iterable[Any], more: tuple[Iterable[Any], ...]
) -> tuple[list[Any], str]:
    """The items of a map and how each is passed: ``kwargs`` (tools), ``value`` or ``args``."""
    _check_target(tool)
    if isinstance(tool, str):
        if more:
            raise InvalidArgumentError(
                f"map a tool over one iterable of dicts of its arguments, e.g. "
                f"s.map({tool!r}, [{{'x': 1}}, {{'x': 2}}])"
            )
        batch: list[Any] = []
        for i, kw in enumerate(items):
            if not isinstance(kw, Mapping):
                raise InvalidArgumentError(
                    f"map item {i} is a {type(kw).__name__}, not a mapping of arguments; "
                    "pass an iterable of dicts such as [{'a': 1}, {'a': 2}]"
                )
            batch.append(kw if type(kw) is dict else dict(kw))
        return batch, "kwargs"
    if more:
        return list(zip(items, *more, strict=False)), "args"
    return list(items), "value"


def _map_values(results: Sequence[tuple[bool, Any]], return_exceptions: bool) -> list[Any]:
    values = [value for _, value in results]
    if not return_exceptions:
        for ok, value in results:
            if not ok:
                raise value
    return values


def _check_target(tool: object) -> None:
    if not isinstance(tool, str) and not callable(tool):
        raise InvalidArgumentError(
            f"call a tool by its name (a str) or pass a Python function, not a "
            f"{type(tool).__name__}"
        )


def _split_reserved(kwargs: dict[str, Any], default: float | None) -> float | None:
    timeout = kwargs.pop("_timeout", default)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise InvalidArgumentError(
            f"_timeout must be a positive number of seconds or None, not {timeout!r}"
        )
    return None if timeout is None else float(timeout)


class AsyncSession:
    """A session, awaitable. Get one with ``await client.session("exp1")``.

    >>> s = await aclient.session("exp1")
    >>> await s.call("add", a=1, b=2)
    3
    """

    def __init__(
        self,
        service: Service,
        loop_thread: LoopThread,
        session_id: str,
        *,
        strict_affinity: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._service = service
        self._loop_thread = loop_thread
        self._session_id = session_id
        self._strict_affinity = strict_affinity
        self._timeout = timeout
        self._vars: AsyncVariables | None = None

    @property
    def session_id(self) -> str:
        return self._session_id

    def _refuse_on_loop(self) -> None:
        if self._loop_thread.in_loop_thread():
            raise RuntimeError(
                "a blocking snakepit_nb call was made on the snakepit-loop thread, where it "
                "would deadlock; use the async API (AsyncClient / AsyncSession) there instead"
            )

    @property
    def id(self) -> str:
        return self._session_id

    @property
    def strict_affinity(self) -> bool:
        """True when every call of this session runs in one worker (see ``client.session``)."""
        return self._strict_affinity

    @property
    def timeout(self) -> float | None:
        """The default deadline (seconds) of this session's calls."""
        return self._timeout

    @property
    def vars(self) -> AsyncVariables:
        """The session's variables: ``await s.vars.set("t", 0.7)``, ``await s.vars.get("t")``."""
        if self._vars is None:
            from snakepit_nb.client.async_variables import AsyncVariables

            self._vars = AsyncVariables(self._service, self._loop_thread, self.session_id)
        return self._vars

    def __repr__(self) -> str:
        return f"<AsyncSession {self.session_id!r}>"

    # ------------------------------------------------------------------ calls

    async def call(self, tool: Target, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``tool`` (a tool's name, or a Python function) and return its result.

        A tool takes keyword arguments; a function any arguments (functions defined in the
        notebook travel by value). ``_timeout=`` (seconds) overrides the session's deadline
        for this call. A tool that raises gives ``RemoteToolError`` with the remote traceback.
        """
        timeout = _split_reserved(kwargs, self.timeout)
        _check_target(tool)
        sink = caller_sink(self._service)  # here: in the caller's thread and cell
        return await on_loop(self._loop_thread, self._call(tool, args, kwargs, timeout, sink))

    async def _call_for(
        self, sink: OutputSink | None, tool: Target, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``call`` with the caller's output sink chosen already (by the blocking Session)."""
        timeout = _split_reserved(kwargs, self.timeout)
        _check_target(tool)
        return await self._call(tool, args, kwargs, timeout, sink)

    async def _call(
        self,
        tool: Target,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        limit: float | None,
        sink: OutputSink | None = None,
    ) -> Any:
        output = self._service.output
        scope = output.open(sink)
        try:
            return await self._service.call(
                self.session_id,
                tool,
                kwargs,
                args=args,
                timeout=limit,
                strict_affinity=self.strict_affinity,
                metadata=scope.metadata,
            )
        finally:
            await output.close(scope)

    def _call_blocking(self, tool: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The blocking call of ``Session.call`` (from a thread that is not the loop's)."""
        self._refuse_on_loop()
        timeout = _split_reserved(kwargs, self.timeout)
        _check_target(tool)
        output = self._service.output
        scope = output.open(caller_sink(self._service))  # in the caller's thread and cell
        try:
            return self._service.call_blocking(
                self.session_id,
                tool,
                args,
                kwargs,
                timeout=timeout,
                strict_affinity=self.strict_affinity,
                metadata=scope.metadata,
            )
        finally:
            output.close_blocking(scope)

    def stream(self, tool: str, /, **kwargs: Any) -> AsyncStream:
        """Start a streaming call; iterate the result with ``async for``.

        ``_timeout=`` as for ``call``; ``_keep=N`` keeps only the last N chunks in
        ``.chunks`` (default: every chunk), for streams too long to hold.
        """
        keep = kwargs.pop("_keep", None)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise InvalidArgumentError(
                f"_keep must be a whole number of chunks >= 0 or None (keep all), not {keep!r}"
            )
        timeout = _split_reserved(kwargs, self.timeout)
        sink = caller_sink(self._service)  # here: in the caller's thread and cell
        return AsyncStream(
            self._loop_thread,
            tool,
            lambda: self._open_stream(tool, kwargs, timeout, sink),
            keep=keep,
        )

    def _open_stream(
        self, tool: str, kwargs: dict[str, Any], timeout: float | None, sink: OutputSink | None
    ) -> BatchStream:
        # Runs on the loop thread, at the first read. What the tool writes goes to the
        # caller's sink until the stream ends.
        output = self._service.output
        scope = output.open(sink)
        try:
            inner = self._service.stream(
                self.session_id,
                tool,
                kwargs,
                timeout=timeout,
                strict_affinity=self.strict_affinity,
                metadata=scope.metadata,
            )
        except BaseException:
            output.discard(scope)
            raise
        return ScopedStream(inner, output, scope)

    async def map(
        self,
        tool: Target,
        items: Iterable[Any],
        /,
        *more: Iterable[Any],
        return_exceptions: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the remote calls
        progress: bool = True,
    ) -> list[Any]:
        """Call ``tool`` once per item, many in flight; results in input order.

        A tool is mapped over dicts of keyword arguments; a Python function over values (or,
        like the builtin ``map``, over several iterables zipped into positional arguments). A
        failing item raises its ``RemoteToolError`` (after every item ran), or, with
        ``return_exceptions=True``, takes its place in the list. A map that takes longer than
        two seconds shows its progress (``progress=False``: never).
        """
        batch, style = _map_items(tool, items, more)
        limit = timeout or self.timeout
        service, sid = self._service, self.session_id
        output = service.output
        scope = output.open(caller_sink(service))  # what the items print: the caller's cell
        metadata = scope.metadata

        async def send(part: Sequence[Any], left: float | None) -> list[Any]:
            return await on_loop(
                self._loop_thread,
                service.map(sid, tool, list(part), style=style, timeout=left, metadata=metadata),
            )

        try:
            if not progress or len(batch) < 2:
                results = await send(batch, limit)
            else:
                plan = ProgressiveMap(
                    batch,
                    workers=service.config.workers,
                    timeout=limit,
                    label=call_label("map", tool),
                )
                results = await plan.arun(send)
        finally:
            await on_loop(self._loop_thread, output.close(scope))
        return _map_values(results, return_exceptions)

    def _map_blocking(
        self,
        tool: Target,
        items: Iterable[Any],
        more: tuple[Iterable[Any], ...],
        return_exceptions: bool,
        timeout: float | None,
        *,
        progress: bool = True,
    ) -> list[Any]:
        self._refuse_on_loop()
        batch, style = _map_items(tool, items, more)
        limit = timeout or self.timeout
        service, sid = self._service, self.session_id
        output = service.output
        scope = output.open(caller_sink(service))  # what the items print: the caller's cell
        metadata = scope.metadata

        def send(part: Sequence[Any], left: float | None) -> list[Any]:
            return service.map_blocking(
                sid, tool, list(part), style=style, timeout=left, metadata=metadata
            )

        try:
            if not progress or len(batch) < 2:
                results = send(batch, limit)
            else:
                plan = ProgressiveMap(
                    batch,
                    workers=service.config.workers,
                    timeout=limit,
                    label=call_label("map", tool),
                )
                results = plan.run(send)
        finally:
            output.close_blocking(scope)
        return _map_values(results, return_exceptions)

    # ------------------------------------------------------------------ the session itself

    async def info(self) -> SessionInfo:
        """Calls, errors, variables and affinity of this session."""
        return await on_loop(self._loop_thread, self._info())

    async def _info(self) -> SessionInfo:
        return self._service.session_info(self.session_id)

    async def aclose(self) -> None:
        """Close the session on the orchestrator; its variables go with it."""
        await on_loop(self._loop_thread, self._close())

    async def _close(self) -> None:
        await self._service.close_session(self.session_id)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Session:
    """A session. Get one with ``client.session("exp1")`` (created if needed).

    >>> s = client.session("exp1")
    >>> s.call("add", a=1, b=2)
    3
    >>> for chunk in s.stream("count", n=3): ...
    >>> s.vars["temperature"] = 0.7
    """

    def __init__(self, inner: AsyncSession) -> None:
        self._async = inner
        self._run = blocking_runner(inner._loop_thread)
        self._vars: Variables | None = None

    @property
    def session_id(self) -> str:
        return self._async.session_id

    @property
    def id(self) -> str:
        return self._async.session_id

    @property
    def strict_affinity(self) -> bool:
        return self._async.strict_affinity

    @property
    def timeout(self) -> float | None:
        return self._async.timeout

    @property
    def vars(self) -> Variables:
        """The session's variables: ``s.vars["t"] = 0.7``, ``s.vars["t"]``, ``s.vars.history``."""
        if self._vars is None:
            from snakepit_nb.client.variables import Variables

            self._vars = Variables(self._async.vars)
        return self._vars

    def __repr__(self) -> str:
        return f"<Session {self.session_id!r}>"

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import session_html

        return session_html(self)

    def call(self, tool: Target, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``tool`` (a tool's name, or a Python function) and wait for its result.

        ``_timeout=`` (seconds) overrides the session's deadline for this call.

        >>> s.call("add", a=1, b=2)
        3
        >>> s.call(lambda x: x * 2, 21)
        42
        """
        with caller_errors("call", tool):
            return self._async._call_blocking(tool, args, kwargs)

    def submit(self, tool: Target, /, *args: Any, **kwargs: Any) -> SessionFuture:
        """Start ``tool`` (a tool's name, or a Python function) and return at once: a future.

        ``f.result()`` waits for its result, ``f.cancel()`` stops it in its worker too; see
        ``sp.as_completed``, ``sp.wait`` and ``sp.progress``. Its output goes to this cell.

        >>> futures = [s.submit("slow", seconds=0.5) for _ in range(4)]
        >>> [f.result() for f in sp.as_completed(futures)]
        >>> s.submit(lambda x: x + 1, 41).result()
        42
        """
        return SessionFuture(
            self._async._loop_thread,
            self._async._call_for(caller_sink(self._async._service), tool, args, kwargs),
            call_label("call", tool),
        )

    def stream(self, tool: str, /, **kwargs: Any) -> Stream:
        """Start a streaming call; iterate the chunks (``.result``, ``.chunks``, ``.close()``).

        ``_timeout=`` as for ``call``; ``_keep=N`` keeps only the last N chunks in ``.chunks``.
        """
        return Stream(self._async.stream(tool, **kwargs))

    def map(
        self,
        tool: Target,
        items: Iterable[Any],
        /,
        *more: Iterable[Any],
        return_exceptions: bool = False,
        timeout: float | None = None,
        progress: bool = True,
    ) -> list[Any]:
        """Call ``tool`` once per item, many in flight; results in input order.

        A map that takes longer than two seconds shows its progress (``progress=False``:
        never).

        >>> s.map("add", [{"a": i, "b": 1} for i in range(3)])
        [1, 2, 3]
        >>> s.map(lambda x: x * x, range(4))
        [0, 1, 4, 9]
        """
        with caller_errors("map", tool):
            return self._async._map_blocking(
                tool, items, more, return_exceptions, timeout, progress=progress
            )

    def info(self) -> SessionInfo:
        """Calls, errors, variables and affinity of this session."""
        return self._run(self._async.info())

    def close(self) -> None:
        """Close the session on the orchestrator; its variables go with it."""
        return self._run(self._async.aclose())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
