"""The DSPy adapter's tools to save programs as JSON and load them back."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.tools.adapter import tool
from snakepit_nb.worker.context import SessionContext

from .programs import (
    ProgramVariables,
    build_program_from_spec,
    module_fields,
    validate_program_name,
)
from .toolkit import KNOBS, DSPyToolkit, describe_program

__all__ = ["SavingTools"]

_MAX_PROGRAM_FILE = 50 * 1024 * 1024


class SavingTools(DSPyToolkit):
    """``dspy.save_program`` and ``dspy.load_program`` (DSPy's JSON format)."""

    # -- saving and loading --------------------------------------------------------------
    @tool(name="dspy.save_program", idempotent=True, required_variables=KNOBS)
    async def save_program(
        self, ctx: SessionContext, name: str, path: str | None = None
    ) -> dict[str, Any]:
        """The program as DSPy's JSON (loadable by ``program.load``), written to ``path`` too.

        ``path`` is on the worker's file system (relative paths: the worker's directory).
        """
        setup = await self._prepare(ctx, name)

        def dump() -> dict[str, Any]:
            from dspy.utils.saving import get_dependency_versions

            data: dict[str, Any] = json.loads(json.dumps(setup.program.dump_state(), default=str))
            data["metadata"] = {"dependency_versions": get_dependency_versions()}
            data["snakepit_nb"] = {"format": 1, "name": name, "spec": setup.spec}
            if path:
                Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")
            return data

        return await asyncio.to_thread(dump)

    @tool(name="dspy.load_program")
    async def load_program(
        self,
        ctx: SessionContext,
        *,
        name: str,
        path: str | None = None,
        data: dict[str, Any] | None = None,
        module: str | None = None,
        signature: str | None = None,
    ) -> dict[str, Any]:
        """Define program ``name`` from saved JSON (``data``, or a file at ``path``).

        Files saved by ``dspy.save_program`` carry their module and signature; for a plain
        DSPy ``program.save()`` file pass ``module`` and ``signature``.
        """
        validate_program_name(name)
        if (path is None) == (data is None):
            raise InvalidArgumentError("pass exactly one of path= or data=; nothing was changed")

        def load() -> tuple[dict[str, Any], Any]:
            saved = data if data is not None else read_program_file(str(path))
            meta = saved.get("snakepit_nb")
            spec = dict(meta.get("spec") or {}) if isinstance(meta, dict) else {}
            if module is not None:
                spec["module"] = module
            if signature is not None:
                spec["signature"] = signature
            program = build_program_from_spec(spec)
            state = {k: v for k, v in saved.items() if k not in ("metadata", "snakepit_nb")}
            try:
                program.load_state(state)
            except Exception as exc:
                raise InvalidArgumentError(
                    f"the saved state does not fit a {spec.get('module')} with signature "
                    f"{spec.get('signature')!r} ({type(exc).__name__}: {exc}); nothing was changed"
                ) from exc
            (_, predictor), *_ = program.named_predictors()
            inputs, outputs = (
                module_fields(program)
                if spec.get("class")
                else (
                    list(predictor.signature.input_fields),
                    list(predictor.signature.output_fields),
                )
            )
            spec.update(
                predictors=[n for n, _ in program.named_predictors()],
                inputs=inputs,
                outputs=outputs,
            )
            return spec, program

        spec, program = await asyncio.to_thread(load)
        names = ProgramVariables(name, tuple(spec["predictors"]))
        await self._write_program(ctx, names, spec, program)
        self.runtime.forget(ctx.session_id, name)
        return describe_program(names, spec, program)


def read_program_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"no program file at {path!r} (worker directory {os.getcwd()})")
    if file.stat().st_size > _MAX_PROGRAM_FILE:
        raise InvalidArgumentError(f"{path!r} is larger than 50 MB; is it a saved DSPy program?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidArgumentError(f"{path!r} is not JSON ({exc}); save programs as JSON") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{path!r} does not hold a saved DSPy program (a JSON object)")
    return data
