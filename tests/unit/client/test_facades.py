"""The blocking and the async facades expose the same public names and signatures."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from snakepit_nb.client.clients import AsyncClient, Client
from snakepit_nb.client.sessions import AsyncSession, Session
from snakepit_nb.client.streams import AsyncStream, AsyncTelemetryFeed, Stream, TelemetryFeed

# Async spelling -> blocking spelling (httpx: aclose/close, the context-manager protocols).
RENAMES = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
# Names only one side has, on purpose.
BLOCKING_ONLY: dict[str, set[str]] = {
    "Client": {"aio"},
    "Session": {"submit"},  # async code awaits s.call(...) or makes it a task
    "Stream": set(),
    "TelemetryFeed": set(),
}
ASYNC_ONLY: dict[str, set[str]] = {
    "AsyncClient": set(),
    "AsyncSession": set(),
    "AsyncStream": set(),
    "AsyncTelemetryFeed": set(),
}


def public(cls: type) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= {n for n in ("__enter__", "__exit__", "__aenter__", "__aexit__") if hasattr(cls, n)}
    return names


PAIRS = [
    (Client, AsyncClient),
    (Session, AsyncSession),
    (Stream, AsyncStream),
    (TelemetryFeed, AsyncTelemetryFeed),
]


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS)
def test_same_public_names(sync_cls: type, async_cls: type) -> None:
    async_names = {RENAMES.get(n, n) for n in public(async_cls)} - ASYNC_ONLY[async_cls.__name__]
    sync_names = public(sync_cls) - BLOCKING_ONLY[sync_cls.__name__]
    if sync_cls in (Stream, TelemetryFeed):  # iteration protocols differ by nature
        sync_names -= {"__iter__", "__next__"}
    assert sync_names == async_names


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS)
def test_same_signatures_and_async_methods_are_coroutines(sync_cls: type, async_cls: type) -> None:
    for name in public(async_cls):
        async_member = inspect.getattr_static(async_cls, name)
        sync_member = inspect.getattr_static(sync_cls, RENAMES.get(name, name))
        if isinstance(async_member, property):
            assert isinstance(sync_member, property), name
            continue
        if name == "stream" or name.startswith("__"):
            continue  # stream() starts an iterator in both; dunders are checked by name
        assert inspect.iscoroutinefunction(async_member), f"{async_cls.__name__}.{name}"
        assert not inspect.iscoroutinefunction(sync_member), f"{sync_cls.__name__}.{name}"
        a = inspect.signature(async_member)
        s = inspect.signature(sync_member)
        assert list(a.parameters) == list(s.parameters), name
        for p in a.parameters:
            assert a.parameters[p].default == s.parameters[p].default, (name, p)
            assert a.parameters[p].kind == s.parameters[p].kind, (name, p)


def test_blocking_methods_are_one_statement() -> None:
    # The blocking facade only hands coroutines to the loop thread: one statement per method.
    for cls in (Client, Session, TelemetryFeed):
        for name, member in vars(cls).items():
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            (func,) = ast.parse(textwrap.dedent(inspect.getsource(member))).body
            assert isinstance(func, ast.FunctionDef)
            body = [
                node
                for node in func.body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            ]
            assert len(body) == 1, f"{cls.__name__}.{name} has {len(body)} statements"
