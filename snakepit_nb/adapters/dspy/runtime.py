"""What one worker keeps for DSPy: built LMs and rebuilt programs.

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
from .programs import (
    ProgramCache,
    ProgramVariables,
    compose_program,
    notebook_class,
    validate_program_name,
)
from .store import Entry, VariableStore

__all__ = ["CallSetup", "ProgramNotDefinedError", "Runtime"]


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
        names = ProgramVariables(
            name, tuple(str(p) for p in spec.get("predictors", ())), bool(spec.get("pickled"))
        )
        return names, spec, entries

    async def prepare(
        self,
        store: VariableStore,
        session_id: str,
        name: str,
        config: Mapping[str, Any] | None = None,
        *,
        api_key: str | None = None,
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
            self.lms.lm, settings, temperature=temperature, max_tokens=max_tokens, api_key=api_key
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

        module_class = None
        if names.pickled:
            entry = entries.get(names.module_class)
            module_class = notebook_class(
                None if entry is None else entry.value,
                "" if entry is None else entry.updated_by,
                names.module_class,
            )
        return compose_program(
            spec,
            value(names.state),
            {p: value(names.instructions(p)) for p in names.predictors},
            {p: value(names.demos(p)) for p in names.predictors},
            module_class,
        )

    def forget(self, session_id: str, name: str) -> None:
        self.programs.forget(session_id, name)
