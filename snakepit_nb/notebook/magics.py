"""``%snakepit`` and ``%%snakepit_tool``: the notebook's commands.

    %snakepit start [-n N] [--adapter pkg.mod:Class] [--python P] [--restart]
                    [--worker-output cell|log|off] [--autoreload]
    %snakepit stop | status [--once] | tools [NAME] | config [--ui-hz H ...]
    %snakepit reload | logs [w1] [-n N] | help [SUBCOMMAND]
    %snakepit session new|use|list|info|close [NAME]
    x = %snakepit call TOOL a=1 b='text' c={notebook_var} [--timeout S] [-s SESSION]
    h = %snakepit stream TOOL n=5 [--bg] [--tail N] [--keep N]
    %snakepit var set NAME VALUE [--type float --min 0 --max 2] | get | list | del | history
                  | rollback NAME VERSION | watch [NAME ...] [--follow [--count N] [--timeout S]]
    %snakepit wait [--timeout S]

Every subcommand returns its result, so ``x = %snakepit ...`` assigns it. Values are Python
literals (``n=5``, ``xs=[1, 2]``; bare words are strings) and ``{name}`` passes a notebook
variable (see :mod:`snakepit_nb.notebook.arguments`). Bad input raises ``UsageError`` with the
usage line. A kernel interrupt during a blocking call cancels the remote call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from . import parsers
from .arguments import expand_word, parse_value, split_arguments, split_words
from .cell_tools import define_cell_tool
from .reprs import (
    History,
    RecordList,
    ReloadResult,
    SessionTable,
    ToolTable,
    WatchSnapshot,
    change_line,
)
from .runtime import DEFAULT_SESSION, NotebookRuntime
from .widgets.view import in_kernel


@contextlib.contextmanager
def _short_errors() -> Iterator[None]:
    """Show snakepit errors as their one-line message (fact + remedy), not our frames.

    A tool's own error (RemoteToolError) already shows the worker's traceback. The exception
    keeps its type, so ``except ToolNotFoundError`` around a magic still works.
    """
    from snakepit_nb._errors import RemoteToolError, SnakepitError

    try:
        yield
    except SnakepitError as exc:
        if not isinstance(exc, RemoteToolError) and not hasattr(exc, "_render_traceback_"):
            line = f"{type(exc).__name__}: {exc}"
            exc._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
        raise


@magics_class
class SnakepitMagics(Magics):
    """The ``%snakepit`` line magic and the ``%%snakepit_tool`` cell magic."""

    def __init__(self, shell: Any, runtime: NotebookRuntime) -> None:
        super().__init__(shell)
        self.runtime = runtime

    @property
    def ns(self) -> dict[str, Any]:
        """The notebook's namespace (for ``{name}`` references and ``--kernel`` cells)."""
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    @property
    def rt(self) -> NotebookRuntime:
        if self.runtime.closed:
            raise UsageError(
                "the snakepit_nb extension was unloaded; load it again with %load_ext snakepit_nb"
            )
        return self.runtime

    @staticmethod
    def _say(message: str) -> None:
        print(message, flush=True)

    # -- %snakepit ----------------------------------------------------------------------------
    @no_var_expand
    @line_magic
    def snakepit(self, line: str) -> Any:
        """Drive the snakepit_nb worker pool; ``%snakepit`` alone lists the subcommands."""
        words = split_words(line)
        if not words or words[0] in ("-h", "--help"):
            print(parsers.overview())
            return None
        command, rest = words[0], words[1:]
        stub = parsers.SUBCOMMANDS.get(command)
        if stub is None:
            from snakepit_nb.protocol.names import did_you_mean

            known = ", ".join(parsers.SUBCOMMANDS)
            raise UsageError(
                f"unknown subcommand {command!r}{did_you_mean(command, parsers.SUBCOMMANDS)}; "
                f"use one of: {known} (%snakepit help lists what each does)"
            )
        if any(w in ("-h", "--help") for w in rest):
            print(parsers.help_text(stub))
            return None
        ns = self.ns
        option_words, kwargs = split_arguments(rest, ns)
        if kwargs and command not in ("call", "stream"):
            raise UsageError(
                f"name=value arguments are for call and stream, not {command}\n"
                f"{parsers.usage(stub)}"
            )
        args = parsers.parse(stub, option_words)
        handler = getattr(self, f"_cmd_{command}")
        with _short_errors():
            return handler(args, kwargs)

    # pool ------------------------------------------------------------------------------------
    def _cmd_start(self, args: Any, _: dict[str, Any]) -> Any:
        rt = self.rt
        if rt.running():
            if not args.restart:
                how = (
                    "started with the defaults by an earlier %snakepit command"
                    if rt.implicit
                    else "started with %snakepit start"
                )
                raise UsageError(
                    f"a pool is already running ({rt.client!r}, {how}); add --restart to "
                    "replace it with this one, or stop it first with %snakepit stop"
                )
            rt.stop()
        if args.workers is not None:
            if args.workers < 1:
                raise UsageError("-n/--workers must be at least 1")
            rt.settings.workers = args.workers
        if args.adapter:
            rt.settings.adapter = expand_word(args.adapter, self.ns)
        if args.python:
            rt.settings.python = expand_word(args.python, self.ns)
        launcher = None
        if args.ray is not None:
            from snakepit_nb.orchestrator.launch.ray_launcher import RayLauncher

            launcher = RayLauncher(address=expand_word(args.ray, self.ns) or None)
        return rt.start(
            call_timeout=args.call_timeout,
            startup_timeout=args.startup_timeout,
            max_queue=args.max_queue,
            worker_output=args.worker_output,
            autoreload=args.autoreload or None,
            launcher=launcher,
        )

    def _cmd_stop(self, args: Any, _: dict[str, Any]) -> None:
        if self.rt.stop():
            self._say("snakepit: pool stopped")
        else:
            self._say("snakepit: no pool is running")

    def _cmd_reload(self, args: Any, _: dict[str, Any]) -> list[str]:
        client = self._require_running()
        replaced = client.reload()
        self._say(f"snakepit: reloaded {', '.join(replaced) or 'no worker (none was ready)'}")
        return ReloadResult(replaced)

    def _cmd_logs(self, args: Any, _: dict[str, Any]) -> Any:
        client = self._require_running()
        if args.lines < 1:
            raise UsageError("-n/--lines must be at least 1")
        worker = expand_word(args.worker, self.ns) if args.worker else None
        return client.logs(worker, lines=args.lines)

    def _client(self) -> Any:
        return self.rt.ensure_client(self._say)

    def _require_running(self) -> Any:
        if not self.rt.running():
            raise UsageError("no pool is running; start one with %snakepit start -n 2")
        return self.rt.client

    def _cmd_status(self, args: Any, _: dict[str, Any]) -> Any:
        client = self._require_running()
        snapshot = client.status()
        if args.once or not self._live():
            return snapshot
        from .widgets.pool import PoolView

        view = PoolView(
            client.aio.status, snapshot, pump=self.rt.pump, loop_thread=self.rt.pump.loop_thread
        )
        view.display()
        view.start()
        self.rt.track(view)
        return view

    def _cmd_tools(self, args: Any, _: dict[str, Any]) -> Any:
        specs = self._client().tools()
        if args.name:
            name = expand_word(args.name, self.ns)
            for spec in specs:
                if spec.name == name:
                    return spec
            from snakepit_nb._errors import ToolNotFoundError

            names = ", ".join(s.name for s in specs) or "none"
            raise ToolNotFoundError(f"tool {name!r} is not registered; available: {names}")
        return ToolTable(specs)

    def _cmd_config(self, args: Any, _: dict[str, Any]) -> dict[str, Any]:
        settings = self.rt.settings
        if args.workers is not None:
            if args.workers < 1:
                raise UsageError("-n/--workers must be at least 1")
            settings.workers = args.workers
        if args.adapter:
            settings.adapter = args.adapter
        if args.python:
            settings.python = args.python
        if args.tail_lines is not None:
            if not 1 <= args.tail_lines <= 1000:
                raise UsageError("--tail-lines must be between 1 and 1000")
            settings.tail_lines = args.tail_lines
        if args.interactive is not None:
            settings.interactive = args.interactive == "on"
        old = (settings.ui_hz, settings.ui_budget)
        if args.ui_hz is not None:
            settings.ui_hz = args.ui_hz
        if args.ui_budget is not None:
            settings.ui_budget = args.ui_budget
        try:
            self.rt.apply_ui_settings()
        except ValueError as exc:
            settings.ui_hz, settings.ui_budget = old
            self.rt.apply_ui_settings()
            raise UsageError(str(exc)) from None
        return settings.as_dict()

    def _live(self) -> bool:
        return self.rt.settings.interactive and in_kernel()

    # sessions --------------------------------------------------------------------------------
    def _cmd_session(self, args: Any, _: dict[str, Any]) -> Any:
        rt = self.rt
        client = self._client()
        name = expand_word(args.name, self.ns) if args.name else None
        known = {info.session_id: info for info in client.sessions()}
        if args.action == "new":
            session = client.session(name)
            rt.sessions[session.id] = session
            rt.current_session = session.id
            return session
        if args.action == "list":
            return SessionTable(list(known.values()), rt.current_session)
        if args.action == "use":
            if not name:
                raise UsageError(f"which session? {parsers.usage(parsers.session)}")
            if name not in known:
                raise UsageError(
                    f"no session {name!r}; create it with %snakepit session new {name} "
                    f"(sessions: {', '.join(known) or 'none'})"
                )
            rt.current_session = name
            return rt.session(name)
        target = name or rt.current_session
        if target not in known:
            raise UsageError(f"no session {target!r}; sessions: {', '.join(known) or 'none'}")
        if args.action == "info":
            return rt.session(target).info()
        # close
        rt.session(target).close()
        rt.sessions.pop(target, None)
        if rt.current_session == target:
            rt.current_session = DEFAULT_SESSION
            self._say(
                f"snakepit: closed session {target!r}; current session is now {DEFAULT_SESSION!r}"
            )
        return None

    # calls -----------------------------------------------------------------------------------
    def _call_target(self, args: Any, kwargs: dict[str, Any]) -> tuple[Any, str]:
        ns = self.ns
        session = self.rt.session(
            expand_word(args.session, ns) if args.session else None, announce=self._say
        )
        if args.timeout is not None:
            if args.timeout <= 0:
                raise UsageError("--timeout must be a positive number of seconds")
            kwargs["_timeout"] = args.timeout
        return session, expand_word(args.tool, ns)

    def _cmd_call(self, args: Any, kwargs: dict[str, Any]) -> Any:
        session, tool = self._call_target(args, kwargs)
        return session.call(tool, **kwargs)

    def _cmd_stream(self, args: Any, kwargs: dict[str, Any]) -> Any:
        from .widgets.stream import StreamHandle

        rt = self.rt
        session, tool = self._call_target(args, kwargs)
        tail = args.tail if args.tail is not None else rt.settings.tail_lines
        if not 1 <= tail <= 1000:
            raise UsageError("--tail must be between 1 and 1000 lines")
        keep = args.keep
        if keep is not None and keep < 0:
            raise UsageError("--keep must be a number of chunks >= 0")
        client = rt.client
        handle = StreamHandle(
            tool,
            kwargs,
            session_id=session.id,
            loop_thread=rt.pump.loop_thread,
            tail_lines=tail,
            keep=keep,
        )
        view = None
        if self._live():
            from .widgets.stream import StreamView

            view = StreamView(handle, rt.pump)
            handle.view = view
            view.display()
        sid = session.id
        call_kwargs = dict(kwargs)
        if keep is not None:
            call_kwargs["_keep"] = keep

        async def open_stream() -> Any:
            asession = await client.aio.session(sid)
            return asession.stream(tool, **call_kwargs)

        handle.start(open_stream)
        rt.track_stream(handle)
        if view is not None:
            rt.track(view)
        if args.bg:
            return handle
        handle.wait_quietly()
        if view is not None:
            # The final render goes out while this cell still runs (nbclient keeps only the
            # running cell's messages).
            rt.pump.wait_idle(timeout=30)
        if handle.error is not None:
            raise handle.error
        return handle

    # variables -------------------------------------------------------------------------------
    def _cmd_var(self, args: Any, _: dict[str, Any]) -> Any:
        ns = self.ns
        session = self.rt.session(
            expand_word(args.session, ns) if args.session else None, announce=self._say
        )
        variables = session.vars
        action = args.action
        raw = list(args.names)
        names = [expand_word(n, ns) for n in raw]

        def need(count: int, what: str) -> None:
            if len(names) != count:
                raise UsageError(f"var {action} takes {what}\n{parsers.usage(parsers.var)}")

        if action == "set":
            need(2, "NAME VALUE")
            value = parse_value(raw[1], ns)
            return self._var_set(variables, names[0], value, args)
        if action == "get":
            need(1, "NAME")
            return variables.get(names[0])
        if action == "list":
            need(0, "no names")
            return RecordList(variables.list())
        if action == "del":
            need(1, "NAME")
            variables.delete(names[0])
            return None
        if action == "history":
            need(1, "NAME")
            if args.last is not None and args.last < 1:
                raise UsageError("-n/--last must be at least 1")
            return History(names[0], variables.history(names[0], args.last))
        if action == "rollback":
            need(2, "NAME VERSION")
            try:
                version = int(names[1])
            except ValueError:
                raise UsageError(f"VERSION must be a whole number, not {names[1]!r}") from None
            return variables.rollback(names[0], version)
        if args.follow:
            return self._var_follow(session, names, args.count, args.timeout)
        if args.count is not None or args.timeout is not None:
            raise UsageError("--count and --timeout go with var watch --follow")
        return self._var_watch(session, names)

    def _cmd_dspy(self, args: Any, _: dict[str, Any]) -> Any:
        from snakepit_nb.adapters.dspy.kernel.client import DSPy

        ns = self.ns
        session = self.rt.session(
            expand_word(args.session, ns) if args.session else None, announce=self._say
        )
        d = DSPy(session)
        if args.action == "programs":
            return d.programs()
        if args.action == "cache":
            return d.cache_info()
        if not args.program:
            raise UsageError(f"dspy history takes PROGRAM\n{parsers.usage(parsers.dspy)}")
        if args.last < 1:
            raise UsageError("-n/--last must be at least 1")
        return d.history(expand_word(args.program, ns), args.last)

    def _var_set(self, variables: Any, name: str, value: Any, args: Any) -> Any:
        constraints: dict[str, Any] = {}
        for key, text in (("min", args.vmin), ("max", args.vmax)):
            if text is not None:
                number = parse_value(text, self.ns)
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise UsageError(f"--{key} must be a number, not {text!r}")
                constraints[key] = number
        if args.choices:
            constraints["choices"] = [
                parse_value(c.strip(), self.ns) for c in args.choices.split(",")
            ]
        defining = bool(constraints or args.vtype or args.description)
        if defining:
            if args.expected_version is not None:
                raise UsageError("--expected-version is for plain writes, not with --type/--min")
            return variables.define(
                name, value, type=args.vtype, description=args.description, **constraints
            )
        if args.expected_version is not None:
            return variables.set(name, value, expected_version=args.expected_version)
        return variables.assign(name, value)  # define (type inferred) or set

    def _var_follow(
        self, session: Any, names: list[str], count: int | None, timeout: float | None
    ) -> WatchSnapshot:
        """Print changes as lines until Ctrl-C, ``count`` changes or ``timeout`` seconds."""
        if count is not None and count < 1:
            raise UsageError("--count must be at least 1")
        if timeout is not None and timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        variables = session.vars
        ends = ["Ctrl-C"]
        if count is not None:
            ends.append(f"{count} change{'s' if count != 1 else ''}")
        if timeout is not None:
            ends.append(f"{timeout:g} s")
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        with variables.watch(*names) as feed:  # the current values first, then changes
            print(
                f"following {', '.join(names) or 'every variable'} of session {session.id!r} "
                f"until {' or '.join(ends)}",
                flush=True,
            )
            try:
                while count is None or seen < count:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    try:
                        change = feed.next(timeout=remaining)
                    except (TimeoutError, StopIteration):
                        break
                    if change.kind != "initial_value":
                        seen += 1
                    print(change_line(change), flush=True)
            except KeyboardInterrupt:
                pass  # how a follow is meant to end
        return self._watch_snapshot(variables, names)

    @staticmethod
    def _watch_snapshot(variables: Any, names: list[str]) -> WatchSnapshot:
        return WatchSnapshot([variables.info(n) for n in names] if names else variables.list())

    def _var_watch(self, session: Any, names: list[str]) -> Any:
        from .widgets.watch import WatchView

        variables = session.vars
        records = self._watch_snapshot(variables, names)
        if not self._live():
            return records
        histories: dict[str, list[float]] = {}
        for record in records:
            if record.type in ("float", "integer"):
                values = [v.value for v in variables.history(record.name, 60)]
                histories[record.name] = [
                    float(v)
                    for v in values
                    if isinstance(v, int | float) and not isinstance(v, bool)
                ]
        rt = self.rt
        client = rt.client
        sid = session.id

        class _Feed:
            """The session's async variables, opened on the loop thread."""

            def watch(self, *watch_names: str, **kw: Any) -> Any:
                async def changes() -> Any:
                    asession = await client.aio.session(sid)
                    async with asession.vars.watch(*watch_names, **kw) as feed:
                        async for change in feed:
                            yield change

                return changes()

            async def set(self, name: str, value: Any, **kw: Any) -> Any:
                asession = await client.aio.session(sid)
                return await asession.vars.set(name, value, **kw)

        view = WatchView(
            _Feed(),
            records,
            names=names,
            session_id=sid,
            pump=rt.pump,
            loop_thread=rt.pump.loop_thread,
            histories=histories,
        )
        view.display()
        view.start()
        rt.track(view)
        return view

    # help ------------------------------------------------------------------------------------
    def _cmd_help(self, args: Any, _: dict[str, Any]) -> None:
        name = args.subcommand
        if name is None:
            print(parsers.overview())
            return
        name = name.removeprefix("%").removeprefix("%")
        if name == "snakepit_tool":
            print(parsers.help_text(parsers.snakepit_tool))
            return
        stub = parsers.SUBCOMMANDS.get(name)
        if stub is None:
            from snakepit_nb.protocol.names import did_you_mean

            raise UsageError(
                f"no subcommand {name!r}{did_you_mean(name, parsers.SUBCOMMANDS)}; "
                f"subcommands: {', '.join(parsers.SUBCOMMANDS)}"
            )
        print(parsers.help_text(stub))

    # waiting ---------------------------------------------------------------------------------
    def _cmd_wait(self, args: Any, _: dict[str, Any]) -> None:
        rt = self.rt
        timeout = args.timeout
        if timeout is not None and timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        try:
            for handle in list(rt.streams):
                handle.wait_quietly(timeout)
            rt.pump.wait_idle(timeout, resend=True)
        except TimeoutError:
            running = [h.tool for h in rt.streams if not h.done()]
            raise TimeoutError(
                f"live views still running after {timeout} s "
                f"(streams: {', '.join(running) or 'none'}); "
                "wait longer with %snakepit wait --timeout S or cancel them with h.cancel()"
            ) from None

    # -- %%snakepit_tool ------------------------------------------------------------------------
    @no_var_expand
    @cell_magic
    def snakepit_tool(self, line: str, cell: str) -> Any:
        """Define a tool from the cell: ``%%snakepit_tool [NAME] [--stream] [--kernel]``.

        The cell is a function definition with any imports it needs. Without ``--kernel`` its
        source goes to every worker (and to workers started later); a syntax error or a failing
        import shows the worker's traceback and changes nothing. With ``--kernel`` the
        function runs here, in the kernel, and workers call it with
        ``ctx.call_kernel_tool(NAME, ...)``.
        """
        words = [expand_word(w, self.ns) for w in split_words(line)]
        args = parsers.parse(parsers.snakepit_tool, words)
        client = self._client()
        with _short_errors():
            return define_cell_tool(
                client,
                cell,
                name=args.name,
                function=args.function,
                stream=args.stream,
                kernel=args.kernel,
                description=args.description,
                namespace=self.ns,
            )
