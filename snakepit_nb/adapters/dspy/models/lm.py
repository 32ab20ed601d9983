"""Language-model settings (a session variable) and the DSPy LM objects built from them.

The settings live in the session variable ``dspy.lm`` (a map) and the sampling temperature in
``temperature`` (a float in [0, 2]), so every worker builds the same model and a slider in the
notebook changes the next call on any worker. Workers never call ``dspy.configure`` (it is
bound to the first thread that calls it); each call runs inside ``dspy.context(lm=...)``.

``model="fake/rules"`` is the offline fake model shipped in ``fake.py``; any other model goes
through DSPy's own ``dspy.LM`` (``"openai/gpt-4o-mini"``, or ``"openai/<name>"`` with
``api_base`` for a local Ollama/vLLM server). API keys are read from the worker's environment
by the variable name in ``api_key_env`` and never stored in session variables.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

from .fake import FAKE_MODEL_NAME

__all__ = ["LM_VARIABLE", "TEMPERATURE_VARIABLE", "LMFactory", "LMSettings"]

LM_VARIABLE = "dspy.lm"
TEMPERATURE_VARIABLE = "temperature"
_ENGINES = ("auto", "lm15", "litellm")


@dataclass(frozen=True)
class LMSettings:
    """What a worker needs to build the language model (JSON-safe; no secrets)."""

    model: str = FAKE_MODEL_NAME
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    cache: bool = False
    engine: str = "auto"
    num_retries: int = 3
    # Fake model only: seconds per call and per streamed chunk, characters per chunk.
    latency: float = 0.0
    chunk_delay: float = 0.0
    chunk_size: int = 6

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.model, str) or "/" not in self.model:
            problems.append(
                f"model must be 'provider/name' such as 'fake/rules' or 'openai/gpt-4o-mini', "
                f"got {self.model!r}"
            )
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens <= 0
        ):
            problems.append(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.engine not in _ENGINES:
            problems.append(f"engine must be one of {', '.join(_ENGINES)}, got {self.engine!r}")
        for name in ("latency", "chunk_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 60:
                problems.append(f"{name} must be a number of seconds in [0, 60], got {value!r}")
        if not isinstance(self.chunk_size, int) or not 1 <= self.chunk_size <= 10_000:
            problems.append(f"chunk_size must be an integer in [1, 10000], got {self.chunk_size!r}")
        if self.api_key_env is not None and not str(self.api_key_env).isidentifier():
            problems.append(
                f"api_key_env names an environment variable (e.g. 'OPENAI_API_KEY'), "
                f"got {self.api_key_env!r}"
            )
        if not isinstance(self.num_retries, int) or not 0 <= self.num_retries <= 10:
            problems.append(f"num_retries must be an integer in [0, 10], got {self.num_retries!r}")
        if not isinstance(self.cache, bool):
            problems.append(f"cache must be true or false, got {self.cache!r}")
        if problems:
            raise InvalidArgumentError("; ".join(problems) + "; nothing was changed")

    @property
    def is_fake(self) -> bool:
        return self.model == FAKE_MODEL_NAME

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None) -> LMSettings:
        """Validate a ``dspy.lm`` variable's value (None means the fake model)."""
        if data is None:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown language-model setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        values: dict[str, Any] = dict(data)
        if isinstance(values.get("latency"), int):
            values["latency"] = float(values["latency"])
        return cls(**values)

    def to_mapping(self) -> dict[str, object]:
        return asdict(self)


def validate_temperature(value: object) -> float:
    """A temperature in [0, 2] as a float, or InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise InvalidArgumentError(
            f"temperature must be a number in [0, 2], got {value!r}; nothing was changed"
        )
    return float(value)


class LMFactory:
    """Builds DSPy LM objects from settings, caching the base LM per settings.

    ``lm(settings, temperature=t)`` returns a cheap per-call copy carrying the knobs, so
    concurrent calls with different temperatures never see each other's settings.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: dict[str, Any] = {}

    def base(self, settings: LMSettings) -> Any:
        key = json.dumps(settings.to_mapping(), sort_keys=True)
        with self._lock:
            lm = self._base.get(key)
            if lm is None:
                lm = self._build(settings)
                if len(self._base) >= 16:  # a notebook rarely flips between more models
                    self._base.pop(next(iter(self._base)))
                self._base[key] = lm
            return lm

    @staticmethod
    def _build(settings: LMSettings) -> Any:
        from .environment import import_dspy

        dspy = import_dspy()
        if settings.is_fake:
            from .fake import FakeEngine

            engine = FakeEngine(
                latency=settings.latency,
                chunk_delay=settings.chunk_delay,
                chunk_size=settings.chunk_size,
            )
            return dspy.LM(FAKE_MODEL_NAME, engine=engine, cache=False)
        kwargs: dict[str, Any] = {
            "cache": settings.cache,
            "engine": settings.engine,
            "num_retries": settings.num_retries,
        }
        if settings.api_base:
            kwargs["api_base"] = settings.api_base
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise InvalidArgumentError(
                    f"environment variable {settings.api_key_env} is not set in the worker; "
                    "pass it to the workers with sp.start(env={...}) and configure again"
                )
            kwargs["api_key"] = key
        return dspy.LM(settings.model, **kwargs)

    def lm(
        self, settings: LMSettings, *, temperature: float | None, max_tokens: int | None = None
    ) -> Any:
        knobs: dict[str, Any] = {}
        if temperature is not None:
            knobs["temperature"] = temperature
        tokens = max_tokens if max_tokens is not None else settings.max_tokens
        if tokens is not None:
            knobs["max_tokens"] = tokens
        return self.base(settings).copy(**knobs)
