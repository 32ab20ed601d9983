"""The user-facing API: ``start``/``astart``, clients, sessions, streams and variables.

Each class comes as a pair (httpx's ``Client``/``AsyncClient``): the async one holds the logic
and runs it on the ``snakepit-loop`` thread; the blocking one hands each call to that thread.
Everything here asks the :class:`~snakepit_nb.orchestrator.orchestrator.Orchestrator` through
its service methods; nothing reaches into the pool, the registry or the stores behind it.
"""

from __future__ import annotations

from snakepit_nb.client.clients import AsyncClient, Client, astart, start
from snakepit_nb.orchestrator.status import ClientStatus

__all__ = ["AsyncClient", "Client", "ClientStatus", "astart", "start"]
