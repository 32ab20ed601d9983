"""What one worker keeps for DSPy: built LMs, rebuilt programs, recent prompts.

None of it is the source of truth (that is the session variables): a worker that is killed
loses only caches, and any worker can serve any call. ``Runtime.prepare`` turns one call's
variables into a ready program and LM:

1. the program's variables in one ``ListVariables`` round trip; the LM settings and the
   temperature usually arrive with the call (the tools declare them as required variables);
2. the program from the cache if its variables' versions are unchanged, else rebuilt
   (a few milliseconds) on a thread;
3. a per-call copy of the LM carrying the temperature (never ``dspy.configure``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_nb._errors import InvalidArgumentError, NotFoundError

from .models.lm import (
    LM_VARIABLE,
    TEMPERATURE_VARIABLE,
    LMFactory,
    LMSettings,
    validate_temperature,
)
from .programs import ProgramCache, ProgramVariables, compose_program, validate_program_name
from .store import Entry, VariableStore

__all__ = ["CallSetup", "ProgramNotDefinedError", "Runtime"]

HISTORY_PER_PROGRAM = 20


class ProgramNotDefinedError(NotFoundError):
    """No program of that name exists in the session."""


@dataclass
class CallSetup:
    """Everything one call needs: the program, its variables, the LM and the knobs."""

    name: str
    names: ProgramVariables
    spec: dict[str, Any]
    program: Any
    versions: tuple[int, ...]
    cached: bool
    settings: LMSettings
    temperature: float | None
    lm: Any


class Runtime:
    """Per-worker caches shared by all calls (and all sessions) the worker serves."""

    def __init__(self) -> None:
        self.lms = LMFactory()
        self.programs = ProgramCache()
        self._history: dict[tuple[str, str], deque[dict[str, Any]]] = {}

    # -- reading a call's state --------------------------------------------------------------
    async def read_program(
        self, store: VariableStore, session_id: str, name: str, extra: list[str]
    ) -> tuple[ProgramVariables, dict[str, Any], dict[str, Entry]]:
        """The program's variable names, its spec, and the entries read (``extra`` too)."""
        validate_program_name(name)
        # One ListVariables for the program's variables, concurrently with the others (which
        # usually arrived with the call as required_variables and cost nothing).
        program_entries, entries = await asyncio.gather(store.read_prefix(name), store.read(extra))
        entries.update(program_entries)
        spec_entry = entries.get(f"{name}.spec")
        if spec_entry is None or not isinstance(spec_entry.value, dict):
            raise ProgramNotDefinedError(
                f"no DSPy program {name!r} in session {session_id!r}; define it with "
                f"dspy.define_program(name={name!r}, signature='question -> answer')"
            )
        spec = dict(spec_entry.value)
        names = ProgramVariables(name, tuple(str(p) for p in spec.get("predictors", ())))
        return names, spec, entries

    async def prepare(
        self,
        store: VariableStore,
        session_id: str,
        name: str,
        config: Mapping[str, Any] | None = None,
    ) -> CallSetup:
        config = dict(config or {})
        names, spec, entries = await self.read_program(
            store, session_id, name, [LM_VARIABLE, TEMPERATURE_VARIABLE]
        )
        lm_entry = entries.get(LM_VARIABLE)
        settings = LMSettings.from_mapping(lm_entry.value if lm_entry else None)
        temperature: float | None = None
        if "temperature" in config:
            temperature = validate_temperature(config.pop("temperature"))
        elif (t := entries.get(TEMPERATURE_VARIABLE)) is not None and t.value is not None:
            temperature = validate_temperature(t.value)
        max_tokens = config.pop("max_tokens", None)
        if config:
            raise InvalidArgumentError(
                f"unknown config key(s) {', '.join(sorted(config))}; use temperature, max_tokens"
            )
        versions = tuple(entries[n].version if n in entries else 0 for n in names.definition())
        program = self.programs.get(session_id, name, versions)
        cached = program is not None
        if program is None:
            program = await asyncio.to_thread(self._compose, names, spec, entries)
            self.programs.put(session_id, name, versions, program)
        lm = await asyncio.to_thread(
            self.lms.lm, settings, temperature=temperature, max_tokens=max_tokens
        )
        return CallSetup(
            name=name,
            names=names,
            spec=spec,
            program=program,
            versions=versions,
            cached=cached,
            settings=settings,
            temperature=temperature,
            lm=lm,
        )

    @staticmethod
    def _compose(names: ProgramVariables, spec: dict[str, Any], entries: dict[str, Entry]) -> Any:
        def value(var: str) -> Any:
            entry = entries.get(var)
            return None if entry is None else entry.value

        return compose_program(
            spec,
            value(names.state),
            {p: value(names.instructions(p)) for p in names.predictors},
            {p: value(names.demos(p)) for p in names.predictors},
        )

    # -- prompts seen by this worker ---------------------------------------------------------
    def record(self, session_id: str, name: str, lm: Any, temperature: float | None) -> None:
        """Keep the LM calls a run made (``lm`` is the per-call copy, its history is ours)."""
        history = self._history.setdefault((session_id, name), deque(maxlen=HISTORY_PER_PROGRAM))
        for entry in list(getattr(lm, "history", []) or []):
            history.append(
                {
                    "messages": _plain_messages(entry.get("messages")),
                    "outputs": [str(o) for o in entry.get("outputs") or []],
                    "model": str(entry.get("model") or ""),
                    "temperature": temperature,
                    "usage": _plain(entry.get("usage")),
                    "timestamp": str(entry.get("timestamp") or ""),
                    "at": time.time(),
                }
            )

    def history(self, session_id: str, name: str, n: int) -> list[dict[str, Any]]:
        entries = list(self._history.get((session_id, name), ()))
        return entries[-n:] if n > 0 else []

    def forget(self, session_id: str, name: str) -> None:
        self.programs.forget(session_id, name)
        self._history.pop((session_id, name), None)


def _plain_messages(messages: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for message in messages or []:
        if isinstance(message, dict):
            content = message.get("content")
            if not isinstance(content, str):
                content = str(content)
            out.append({"role": str(message.get("role", "")), "content": content})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
