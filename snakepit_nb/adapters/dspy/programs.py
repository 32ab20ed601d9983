"""DSPy programs as session variables, and the worker's cache of rebuilt programs.

A program named ``qa`` lives in the orchestrator as these variables (the source of truth):

===============================  ======  ===================================================
``qa.spec``                      map     ``{"module": "ChainOfThought", "signature":
                                         "question -> answer", "predictors": ["predict"]}``
``qa.state``                     map     DSPy's ``dump_state()`` minus instructions and demos
                                         (field prefixes and descriptions)
``qa.instructions``              string  the predictor's instructions (what people edit)
``qa.demos``                     list    the predictor's few-shot demos, a list of dicts
``qa.best_score``                float   best score of the last optimization, as it improves
``qa.optimizer_status``          map     phase and progress of the last optimization
``qa.last_output``               map     the last run's inputs, outputs and prompt
``qa.calls``                     map     one version per run: its LM calls (``history.py``)
===============================  ======  ===================================================

A program with several predictors has ``qa.<predictor>.instructions`` and
``qa.<predictor>.demos`` instead. Every fact lives in exactly one variable, so an edit to
``qa.instructions`` (a widget, ``session.vars``, an optimizer) is what the next run uses, on
any worker. Workers rebuild a program in a few milliseconds and keep it in a small cache
keyed by the versions of its variables.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = [
    "MODULES",
    "ProgramCache",
    "ProgramVariables",
    "build_module",
    "build_program",
    "build_program_from_spec",
    "compose_program",
    "decompose_program",
    "instantiate",
    "module_fields",
    "notebook_class",
    "validate_demos",
    "validate_program_name",
]

MODULES = ("Predict", "ChainOfThought")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


def validate_program_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError(
            f"program name must start with a letter and hold only letters, digits and '_' "
            f"(at most 48), got {name!r}; nothing was changed"
        )
    return name


@dataclass(frozen=True)
class ProgramVariables:
    """The names of the session variables that hold one program."""

    name: str
    predictors: tuple[str, ...] = ()
    pickled: bool = False  # a module class from the notebook, in ``<name>.class``

    @property
    def spec(self) -> str:
        return f"{self.name}.spec"

    @property
    def state(self) -> str:
        return f"{self.name}.state"

    @property
    def best_score(self) -> str:
        return f"{self.name}.best_score"

    @property
    def optimizer_status(self) -> str:
        return f"{self.name}.optimizer_status"

    @property
    def last_output(self) -> str:
        return f"{self.name}.last_output"

    @property
    def calls(self) -> str:
        return f"{self.name}.calls"

    @property
    def module_class(self) -> str:
        return f"{self.name}.class"

    def _prefix(self, predictor: str) -> str:
        return self.name if len(self.predictors) == 1 else f"{self.name}.{predictor}"

    def instructions(self, predictor: str) -> str:
        return f"{self._prefix(predictor)}.instructions"

    def demos(self, predictor: str) -> str:
        return f"{self._prefix(predictor)}.demos"

    def definition(self) -> list[str]:
        """Every variable a worker reads to rebuild the program (spec first)."""
        names = [self.spec, self.state]
        if self.pickled:
            names.append(self.module_class)
        for predictor in self.predictors:
            names += [self.instructions(predictor), self.demos(predictor)]
        return names

    def predictor_for(self, predictor: str | None) -> str:
        """Resolve a user's predictor name (None: the only one)."""
        if predictor is None:
            if len(self.predictors) == 1:
                return self.predictors[0]
            raise InvalidArgumentError(
                f"program {self.name!r} has predictors {', '.join(self.predictors)}; name one"
            )
        if predictor not in self.predictors:
            raise InvalidArgumentError(
                f"program {self.name!r} has no predictor {predictor!r}; it has "
                f"{', '.join(self.predictors)}"
            )
        return predictor


def _dspy() -> Any:
    from .models.environment import import_dspy

    return import_dspy()


def build_program(module: object, signature: object) -> Any:
    """A fresh DSPy module from a module type and a signature string (validated)."""
    if module not in MODULES:
        raise InvalidArgumentError(
            f"module must be one of {', '.join(MODULES)}, got {module!r}; nothing was changed"
        )
    if not isinstance(signature, str) or "->" not in signature:
        raise InvalidArgumentError(
            f"signature must be a string like 'question -> answer' or "
            f"'context, question -> answer: int', got {signature!r}; nothing was changed"
        )
    dspy = _dspy()
    try:
        return getattr(dspy, str(module))(signature)
    except Exception as exc:
        raise InvalidArgumentError(
            f"DSPy refused the signature {signature!r}: {exc}; nothing was changed"
        ) from exc


_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def build_module(path: object, init: Mapping[str, Any] | None = None) -> Any:
    """An instance of a ``dspy.Module`` class named ``"package.module:ClassName"``.

    The class must be importable in the worker; ``init`` are its constructor's keyword
    arguments (JSON values).
    """
    if not isinstance(path, str) or not _CLASS_PATH.match(path):
        raise InvalidArgumentError(
            f"a module class is named 'package.module:ClassName', got {path!r}; nothing was changed"
        )
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgumentError(
            f"the module class {path!r} cannot be imported in the worker ({exc}); make its "
            "file importable by the workers (sp.start(env={'PYTHONPATH': ...}))"
        ) from exc
    return instantiate(found, init, what=path)


def instantiate(cls: Any, init: Mapping[str, Any] | None, *, what: str) -> Any:
    """``cls(**init)``, checked to be a ``dspy.Module`` with predictors."""
    dspy = _dspy()
    if not (isinstance(cls, type) and issubclass(cls, dspy.Module)):
        raise InvalidArgumentError(f"{what!r} is not a dspy.Module class")
    try:
        program = cls(**dict(init or {}))
    except Exception as exc:
        raise InvalidArgumentError(
            f"{what}(**{dict(init or {})!r}) failed ({type(exc).__name__}: {exc}); pass its "
            "constructor's arguments with init={...}; nothing was changed"
        ) from exc
    if not program.named_predictors():
        raise InvalidArgumentError(f"{what} has no predictors (dspy.Predict and the like)")
    return program


def notebook_class(value: object, updated_by: str, variable: str) -> Any:
    """The module class the notebook stored (pickled) in ``variable``.

    Unpickled only in a worker started with the runtime token and only when the kernel wrote
    the variable: unpickling runs code, so nothing written by anyone else is unpickled.
    """
    from snakepit_nb.protocol.auth import TOKEN_ENV

    if not os.environ.get(TOKEN_ENV):
        raise InvalidArgumentError(
            "a module class defined in the notebook travels pickled, which only the kernel's "
            "own authenticated workers take; start the pool with auth on, or put the class in "
            "a .py file the workers can import"
        )
    if updated_by != "kernel" or not isinstance(value, bytes | bytearray):
        raise InvalidArgumentError(
            f"{variable} was not written by the notebook as a pickled class (written by "
            f"{updated_by or 'unknown'}); define the program from the notebook with "
            "d.program(name, YourModule)"
        )
    from snakepit_nb.protocol.pickling import loads

    return loads(bytes(value), what=f"the module class in {variable}")


def build_program_from_spec(spec: Mapping[str, Any], module_class: Any = None) -> Any:
    """A fresh program from a ``<name>.spec`` value: a module class (importable, or the
    notebook's own, given unpickled as ``module_class``), or module + signature."""
    if spec.get("pickled"):
        return instantiate(module_class, spec.get("init"), what=str(spec.get("module")))
    if spec.get("class"):
        return build_module(spec["class"], spec.get("init"))
    return build_program(spec.get("module"), spec.get("signature"))


def module_fields(program: Any) -> tuple[list[str], list[str]]:
    """A program's inputs (its ``forward`` parameters) and outputs (its last predictor's)."""
    predictors = program.named_predictors()
    outputs = list(predictors[-1][1].signature.output_fields)
    try:
        parameters = list(inspect.signature(program.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    inputs = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    if not inputs:  # forward(**kwargs): the first predictor's inputs
        inputs = list(predictors[0][1].signature.input_fields)
    return inputs, outputs


def _jsonable(value: Any) -> Any:
    """Demos may hold DSPy objects (Examples, Predictions); keep their JSON content."""
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "toDict", lambda: str(o))()))


def _entry(state: dict[str, Any], predictor: str) -> dict[str, Any]:
    """A predictor's part of a program state (a bare ``Predict`` is its own state, "self")."""
    if predictor == "self":
        return state
    entry = state.get(predictor)
    if not isinstance(entry, dict):
        entry = state[predictor] = {}
    return entry


def decompose_program(program: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, list[Any]]]:
    """Split ``dump_state()`` into (state without instructions/demos, instructions, demos)."""
    state = _jsonable(program.dump_state())
    instructions: dict[str, str] = {}
    demos: dict[str, list[Any]] = {}
    for name, predictor in program.named_predictors():
        entry = _entry(state, name)
        instructions[name] = str(predictor.signature.instructions)
        demos[name] = list(entry.get("demos", []))
        entry["demos"] = []
        signature = entry.get("signature")
        if isinstance(signature, dict):
            signature.pop("instructions", None)
    return state, instructions, demos


def compose_program(
    spec: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    instructions: Mapping[str, str | None],
    demos: Mapping[str, Sequence[Any] | None],
    module_class: Any = None,
) -> Any:
    """Rebuild a program from its variables (the inverse of ``decompose_program``)."""
    program = build_program_from_spec(spec, module_class)
    full = copy.deepcopy(dict(state or {}))
    for name, predictor in program.named_predictors():
        entry = _entry(full, name)
        if not entry:
            entry.update(_jsonable(predictor.dump_state()))
        entry["demos"] = list(demos.get(name) or [])
        signature = entry.setdefault("signature", {})
        text = instructions.get(name)
        signature["instructions"] = (
            text if text is not None else str(predictor.signature.instructions)
        )
    program.load_state(full)
    return program


def validate_demos(program: Any, predictor: str, demos: object) -> list[dict[str, Any]]:
    """Demos are a list of dicts whose keys are fields of the predictor's signature."""
    if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
        raise InvalidArgumentError(
            f"demos must be a list of dicts like {{'question': ..., 'answer': ...}}, got "
            f"{type(demos).__name__}; nothing was changed"
        )
    target = dict(program.named_predictors())[predictor]
    fields = set(target.signature.input_fields) | set(target.signature.output_fields)
    for i, demo in enumerate(demos):
        unknown = sorted(set(demo) - fields - {"augmented"})
        if unknown:
            raise InvalidArgumentError(
                f"demo {i} has key(s) {', '.join(unknown)} that are not fields of "
                f"{predictor!r} ({', '.join(sorted(fields))}); nothing was changed"
            )
    return [dict(d) for d in demos]


class ProgramCache:
    """Rebuilt programs per (session, program), valid while their variables' versions hold."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[tuple[int, ...], Any]] = OrderedDict()
        self.hits = 0
        self.builds = 0

    def get(self, session_id: str, name: str, versions: tuple[int, ...]) -> Any | None:
        with self._lock:
            item = self._items.get((session_id, name))
            if item is None or item[0] != versions:
                return None
            self._items.move_to_end((session_id, name))
            self.hits += 1
            return item[1]

    def put(self, session_id: str, name: str, versions: tuple[int, ...], program: Any) -> None:
        with self._lock:
            self.builds += 1
            self._items[(session_id, name)] = (versions, program)
            self._items.move_to_end((session_id, name))
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def forget(self, session_id: str, name: str) -> None:
        with self._lock:
            self._items.pop((session_id, name), None)
