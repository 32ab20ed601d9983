"""Rich HTML reprs of snakepit_nb objects (the classes delegate ``_repr_html_`` here).

Each function takes the object and returns an HTML fragment; the objects keep their plain
``repr`` as the ``text/plain`` fallback. The functions read public attributes only and never
block for long (a client's repr reads the pool's local status snapshot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from snakepit_nb.display import formatting as fmt


def mimebundle(obj: Any, html: str) -> dict[str, str]:
    return {"text/plain": repr(obj), "text/html": html}


# -- tools -------------------------------------------------------------------------------------
def _tool_kind(spec: Any) -> str:
    kind = getattr(spec, "kind", None)
    if isinstance(kind, str):
        return kind
    meta = dict(getattr(spec, "metadata", {}) or {})
    if meta.get("kernel") == "true":
        return "kernel"
    return "cell" if meta.get("source") == "cell" else "worker"


def _signature(spec: Any) -> str:
    sig = getattr(spec, "signature", None)
    if isinstance(sig, str):
        return sig
    params = ", ".join(getattr(p, "name", "?") for p in getattr(spec, "parameters", ()))
    return f"{getattr(spec, 'name', '?')}({params})"


def tool_spec_html(spec: Any) -> str:
    """One tool: signature, kind, streaming flag, description and parameter table."""
    kind = _tool_kind(spec)
    flags = [fmt.badge(kind)]
    if getattr(spec, "supports_streaming", False):
        flags.append(fmt.badge("stream"))
    desc = str(getattr(spec, "description", "") or "").strip()
    params = list(getattr(spec, "parameters", ()) or ())
    body = ""
    if desc:
        body += f'<div style="color:{fmt.MUTED};white-space:pre-wrap">{fmt.prose(desc)}</div>'
    if params:
        rows = []
        for p in params:
            default = getattr(p, "default", None)
            required = bool(getattr(p, "required", False))
            rows.append(
                [
                    fmt.mono(getattr(p, "name", "?")),
                    fmt.esc(getattr(p, "type", "") or "any"),
                    "required" if required else fmt.mono(fmt.short_repr(default, 40)),
                    fmt.prose(getattr(p, "description", "") or ""),
                ]
            )
        body += fmt.table(["parameter", "type", "default", "description"], rows)
    required_vars = list(getattr(spec, "required_variables", ()) or ())
    if required_vars:
        body += (
            f'<div style="color:{fmt.MUTED};font-size:12px">reads variables: '
            f"{fmt.esc(', '.join(required_vars))}</div>"
        )
    title = f"{fmt.mono(_signature(spec))} {' '.join(flags)}"
    return fmt.card(title, body, css_class="snakepit-tool")


def tool_table_html(specs: Iterable[Any]) -> str:
    """Every tool in one table."""
    rows = []
    for spec in sorted(specs, key=lambda s: str(getattr(s, "name", ""))):
        desc = str(getattr(spec, "description", "") or "").strip()
        first = desc.splitlines()[0] if desc else ""
        kind = fmt.badge(_tool_kind(spec))
        if getattr(spec, "supports_streaming", False):
            kind += " " + fmt.badge("stream")
        rows.append([fmt.mono(_signature(spec)), kind, fmt.prose(first)])
    if not rows:
        return fmt.card("<b>tools</b>", f'<span style="color:{fmt.MUTED}">none</span>')
    return fmt.card(
        f"<b>{len(rows)} tools</b>",
        fmt.table(["tool", "kind", "description"], rows),
        css_class="snakepit-tools",
    )


# -- client, sessions --------------------------------------------------------------------------
def client_html(client: Any, status: Any = None) -> str:
    """The client: workers and their state, the adapter, open sessions."""
    closed = bool(getattr(client, "closed", False))
    title = f"<b>snakepit_nb client</b> {fmt.badge('closed' if closed else 'running')}"
    config = getattr(client, "config", None)
    facts = []
    if config is not None:
        facts.append(f"adapter {fmt.mono(str(getattr(config, 'adapter', '')))}")
        facts.append(f"{getattr(config, 'workers', '?')} workers configured")
    address = getattr(client, "address", None)
    if address:
        facts.append(f"orchestrator {fmt.mono(str(address))}")
    body = f'<div style="color:{fmt.MUTED};font-size:12px">{" · ".join(facts)}</div>'
    if status is not None and not closed:
        body += pool_status_html(status, live=False)
    return fmt.card(title, body, css_class="snakepit-client")


def session_html(session: Any) -> str:
    """A session: its id and what the notebook can do with it."""
    sid = getattr(session, "id", None) or getattr(session, "session_id", "?")
    title = f"<b>session</b> {fmt.mono(str(sid))}"
    body = (
        f'<div style="color:{fmt.MUTED};font-size:12px">calls: <code>s.call(tool, **kw)</code>'
        " · streams: <code>s.stream(tool, **kw)</code> · variables: <code>s.vars</code></div>"
    )
    return fmt.card(title, body, css_class="snakepit-session")


def session_info_html(info: Any) -> str:
    """A ``SessionInfo`` snapshot: calls, errors, variables, affinity, idle time."""
    rows = [
        ["calls", fmt.count(int(getattr(info, "call_count", 0)))],
        ["failed", fmt.count(int(getattr(info, "error_count", 0)))],
        ["variables", fmt.count(int(getattr(info, "variable_count", 0)))],
        ["last worker", fmt.esc(getattr(info, "last_worker", None) or "–")],
        ["affinity", "strict" if getattr(info, "strict_affinity", False) else "hint"],
        ["idle", fmt.duration(getattr(info, "idle_seconds", None))],
    ]
    title = f"<b>session</b> {fmt.mono(str(getattr(info, 'session_id', '?')))}"
    return fmt.card(title, fmt.table(["", ""], rows), css_class="snakepit-session")


def session_table_html(rows: Sequence[dict[str, Any]], current: str | None) -> str:
    body_rows = []
    for row in rows:
        sid = str(row.get("id", "?"))
        mark = " ← current" if sid == current else ""
        body_rows.append(
            [fmt.mono(sid) + f'<span style="color:{fmt.ACCENT}">{mark}</span>']
            + [fmt.esc(fmt.short_repr(v, 40)) for k, v in row.items() if k != "id"]
        )
    headers = ["session"] + [k for k in (rows[0] if rows else {}) if k != "id"]
    if not body_rows:
        return fmt.card("<b>sessions</b>", f'<span style="color:{fmt.MUTED}">none</span>')
    return fmt.card(
        f"<b>{len(body_rows)} sessions</b>",
        fmt.table(headers, body_rows),
        css_class="snakepit-sessions",
    )


# -- variables ---------------------------------------------------------------------------------
def variable_html(record: Any) -> str:
    """One variable record: value, type, version, constraints, who wrote it."""
    name = getattr(record, "name", "?")
    title = (
        f"<b>{fmt.esc(name)}</b> {fmt.mono(fmt.short_repr(getattr(record, 'value', None), 80))}"
        f' <span style="color:{fmt.MUTED}">{fmt.esc(getattr(record, "type", ""))} · '
        f"v{fmt.esc(getattr(record, 'version', '?'))}</span>"
    )
    facts = []
    constraints = dict(getattr(record, "constraints", {}) or {})
    if constraints:
        facts.append(
            "constraints "
            + ", ".join(f"{k}={fmt.short_repr(v, 30)}" for k, v in sorted(constraints.items()))
        )
    source = getattr(record, "source", "")
    updated = getattr(record, "updated_at", None)
    if source:
        when = (
            time.strftime("%H:%M:%S", time.localtime(updated))
            if isinstance(updated, int | float)
            else "?"
        )
        facts.append(f"last written by {source} at {when}")
    opt = getattr(record, "optimization", None)
    if opt is not None:
        facts.append(f"being optimized by {getattr(opt, 'optimizer_id', '?')}")
    body = f'<div style="color:{fmt.MUTED};font-size:12px">{fmt.esc(" · ".join(facts))}</div>'
    return fmt.card(title, body, css_class="snakepit-variable")


def variable_table_html(records: Iterable[Any]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: str(getattr(r, "name", ""))):
        rows.append(
            [
                f"<b>{fmt.esc(getattr(r, 'name', '?'))}</b>",
                fmt.mono(fmt.short_repr(getattr(r, "value", None), 60)),
                fmt.esc(getattr(r, "type", "")),
                f"v{fmt.esc(getattr(r, 'version', '?'))}",
                fmt.esc(getattr(r, "source", "")),
            ]
        )
    if not rows:
        return fmt.card("<b>variables</b>", f'<span style="color:{fmt.MUTED}">none</span>')
    return fmt.card(
        f"<b>{len(rows)} variables</b>",
        fmt.table(["name", "value", "type", "version", "by"], rows),
        css_class="snakepit-variables",
    )


def history_html(name: str, versions: Sequence[Any]) -> str:
    rows = []
    for v in versions:
        at = getattr(v, "at", None)
        when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else ""
        rows.append(
            [
                f"v{fmt.esc(getattr(v, 'version', '?'))}",
                fmt.mono(fmt.short_repr(getattr(v, "value", None), 60)),
                fmt.esc(getattr(v, "source", "")),
                fmt.esc(when),
            ]
        )
    values = [getattr(v, "value", None) for v in versions]
    numbers = [x for x in values if isinstance(x, int | float) and not isinstance(x, bool)]
    spark = (
        fmt.sparkline([float(x) for x in numbers], width=240, height=36) if len(numbers) > 1 else ""
    )
    return fmt.card(
        f"<b>history of {fmt.esc(name)}</b> {spark}",
        fmt.table(["version", "value", "by", "at"], rows),
        css_class="snakepit-history",
    )


def pool_status_html(status: Any, *, live: bool = True) -> str:
    """The worker table for a ``PoolStatus``-like object (``workers``, ``queue_length``)."""
    workers = list(getattr(status, "workers", []) or [])
    rows = []
    for wk in workers:
        state = str(getattr(wk, "state", "?"))
        last_error = str(getattr(wk, "last_error", "") or "")
        err = (
            f'<span title="{fmt.esc(last_error)}" style="color:{fmt.RED}">'
            f"{fmt.esc(fmt.short_repr(last_error, 50).strip(chr(39)))}</span>"
            if last_error
            else ""
        )
        node = str(getattr(wk, "node", "") or "")
        host = str(getattr(wk, "host", "") or "")
        where = (
            f'<span title="node {fmt.esc(node)} on {fmt.esc(host)}">{fmt.esc(node[:12])}</span>'
            if node
            else "–"
        )
        rows.append(
            [
                f"<b>{fmt.esc(getattr(wk, 'worker_id', '?'))}</b>",
                fmt.esc(getattr(wk, "pid", None) or "–"),
                where,
                fmt.badge(state),
                fmt.esc(getattr(wk, "in_flight", 0)),
                fmt.count(int(getattr(wk, "calls", 0) or 0)),
                fmt.count(int(getattr(wk, "errors", 0) or 0)),
                fmt.esc(getattr(wk, "restarts", 0)),
                fmt.size(getattr(wk, "rss", None)),
                fmt.duration(getattr(wk, "uptime", None)),
                err,
            ]
        )
    queue = getattr(status, "queue_length", 0)
    n_ready = sum(1 for wk in workers if str(getattr(wk, "state", "")) in ("ready", "busy", "idle"))
    title = (
        f'<div style="font-family:{fmt.FONT};font-size:13px;margin-bottom:4px">'
        f"<b>snakepit pool</b> "
        f'<span style="color:{fmt.MUTED}">· {n_ready}/{len(workers)} workers up · '
        f"queue {queue}{' · live' if live else ''}</span></div>"
    )
    if not workers:
        return title + f'<div style="color:{fmt.MUTED}">no workers</div>'
    return title + fmt.table(
        [
            "worker",
            "pid",
            "node",
            "state",
            "in flight",
            "calls",
            "errors",
            "restarts",
            "memory",
            "uptime",
            "last error",
        ],
        rows,
        css_class="snakepit-pool-rows",
    )


# -- streams and errors ------------------------------------------------------------------------
def stream_handle_html(handle: Any) -> str:
    status = str(getattr(handle, "status", "?"))
    chunks = getattr(handle, "chunks", [])
    title = (
        f"<b>{fmt.esc(getattr(handle, 'tool', '?'))}</b> {fmt.badge(status)} "
        f'<span style="color:{fmt.MUTED}">{fmt.count(len(chunks))} chunks · '
        f"{fmt.duration(getattr(handle, 'elapsed', None))}</span>"
    )
    body = ""
    if status == "done":
        body = fmt.mono(fmt.short_repr(getattr(handle, "value", None), 400))
    elif getattr(handle, "error", None) is not None:
        body = error_html(handle.error)
    return fmt.card(title, body, css_class="snakepit-stream-handle")


def error_html(exc: BaseException) -> str:
    """An error as a red block: the remote traceback for a tool's error, else the message."""
    lines: list[str]
    render = getattr(exc, "_render_traceback_", None)
    if callable(render):
        try:
            lines = list(render())
        except Exception:
            lines = [f"{type(exc).__name__}: {exc}"]
    else:
        lines = [f"{type(exc).__name__}: {exc}"]
    return (
        f'<pre class="snakepit-error" style="font-family:{fmt.MONO};font-size:12px;'
        f"color:{fmt.RED};background:rgba(220,38,38,0.06);padding:6px 8px;border-radius:4px;"
        f'white-space:pre-wrap;margin:2px 0">{fmt.esc(chr(10).join(lines))}</pre>'
    )
