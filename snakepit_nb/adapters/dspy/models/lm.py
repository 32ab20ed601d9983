"""Language-model settings (a session variable) and the DSPy LM objects built from them.

The settings live in the session variable ``dspy.lm`` (a map) and the sampling temperature in
``temperature`` (a float in [0, 2]), so every worker builds the same model and a slider in the
notebook changes the next call on any worker. Workers never call ``dspy.configure`` (it is
bound to the first thread that calls it); each call runs inside ``dspy.context(lm=...)``.

``model="fake/rules"`` is the offline fake model shipped in ``fake.py``; any other model goes
through DSPy's own ``dspy.LM`` (``"openai/gpt-4o-mini"``, or ``"openai/<name>"`` with
``api_base`` for a local Ollama/vLLM/llama.cpp server). Any other ``dspy.LM`` option
(``timeout``, ``model_type``, ``top_p``, ...) is kept in ``options`` and passed through.

API keys are never stored in session variables (nor in the history): a call carries the key
the notebook resolved at call time (``api_key=`` to ``configure_lm``, kept in the kernel's
memory, or the kernel's environment variable), and without one the worker looks in its own
environment (``api_key_env``, then DSPy's usual variables). A local server needs no key: with
``api_base`` set and no key anywhere, the placeholder ``"EMPTY"`` is sent, which such servers
ignore.

Real models are cached by DSPy on disk, in one folder all workers share and that outlives the
pool (``cache.py``); the fake model is not cached (it answers instantly, and a cached answer
would not stream).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

from .fake import FAKE_MODEL_NAME

__all__ = [
    "LM_VARIABLE",
    "PLACEHOLDER_KEY",
    "TEMPERATURE_VARIABLE",
    "LMFactory",
    "LMSettings",
    "default_key_env",
]

LM_VARIABLE = "dspy.lm"
TEMPERATURE_VARIABLE = "temperature"
PLACEHOLDER_KEY = "EMPTY"
_ENGINES = ("auto", "lm15", "litellm")
# Options that would put a secret (or a live object) into a session variable.
_REFUSED_OPTIONS = {
    "api_key": "pass api_key= to configure_lm (it stays in the notebook's memory) or name an "
    "environment variable with api_key_env=",
    "temperature": "set the temperature with temperature= (the session variable 'temperature')",
    "callbacks": "callbacks are Python objects and cannot be shared with the workers",
    "provider": "provider is a Python object and cannot be shared with the workers",
    "engine": "pass engine= ('auto', 'lm15' or 'litellm')",
}
_SECRET_HINTS = ("key", "token", "secret", "password")


def default_key_env(model: str) -> str:
    """The environment variable a provider's key usually lives in: ``OPENAI_API_KEY``."""
    provider = model.split("/", 1)[0].replace("-", "_").upper()
    return f"{provider}_API_KEY"


@dataclass(frozen=True)
class LMSettings:
    """What a worker needs to build the language model (JSON-safe; no secrets)."""

    model: str = FAKE_MODEL_NAME
    max_tokens: int | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    # None: on for real models (DSPy's disk cache, shared by the workers), off for the fake.
    cache: bool | None = None
    engine: str = "auto"
    num_retries: int = 3
    # Any other dspy.LM keyword argument (JSON values only).
    options: dict[str, Any] = field(default_factory=dict)
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
        if self.api_base is not None and (
            not isinstance(self.api_base, str) or "://" not in self.api_base
        ):
            problems.append(
                f"api_base must be a URL such as 'http://127.0.0.1:8000/v1', got {self.api_base!r}"
            )
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
        if self.cache is not None and not isinstance(self.cache, bool):
            problems.append(f"cache must be true or false, got {self.cache!r}")
        problems += _option_problems(self.options)
        if problems:
            raise InvalidArgumentError("; ".join(problems) + "; nothing was changed")

    @property
    def is_fake(self) -> bool:
        return self.model == FAKE_MODEL_NAME

    @property
    def cached(self) -> bool:
        """Whether DSPy's disk cache serves repeated calls (default: real models only)."""
        return (not self.is_fake) if self.cache is None else self.cache

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
        for name in ("latency", "chunk_delay"):
            if isinstance(values.get(name), int):
                values[name] = float(values[name])
        if values.get("options") is None:
            values["options"] = {}
        return cls(**values)

    def to_mapping(self) -> dict[str, object]:
        return asdict(self)


def _option_problems(options: object) -> list[str]:
    if not isinstance(options, dict):
        return [f"options must be a dict of dspy.LM keyword arguments, got {options!r}"]
    problems: list[str] = []
    for name in options:
        if name in _REFUSED_OPTIONS:
            problems.append(f"{name!r} cannot be an LM option: {_REFUSED_OPTIONS[name]}")
        elif name in LMSettings.__dataclass_fields__:
            problems.append(f"pass {name}= itself, not inside options")
        elif any(hint in str(name).lower() for hint in _SECRET_HINTS):
            problems.append(
                f"{name!r} looks like a secret and would be stored in a session variable; "
                "pass the key with api_key= (kept in the notebook's memory) instead"
            )
    try:
        json.dumps(options)
    except (TypeError, ValueError):
        problems.append("LM options must be JSON values (strings, numbers, lists, dicts)")
    return problems


def validate_temperature(value: object) -> float:
    """A temperature in [0, 2] as a float, or InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise InvalidArgumentError(
            f"temperature must be a number in [0, 2], got {value!r}; nothing was changed"
        )
    return float(value)


def resolve_key(settings: LMSettings, api_key: str | None) -> str | None:
    """The key a worker sends: the call's, else its environment's, else a local placeholder."""
    if settings.is_fake:
        return None
    if api_key:
        return api_key
    if settings.api_key_env:
        key = os.environ.get(settings.api_key_env)
        if key:
            return key
        if not settings.api_base:
            raise InvalidArgumentError(
                f"environment variable {settings.api_key_env} is set neither in the notebook "
                "nor in the worker; set it (os.environ in the notebook is read at each call) "
                "or pass api_key= to configure_lm"
            )
    if settings.api_base and not os.environ.get(default_key_env(settings.model)):
        return PLACEHOLDER_KEY  # a local server without authentication
    return None  # DSPy finds the provider's usual environment variable, or says which


class LMFactory:
    """Builds DSPy LM objects from settings, caching the base LM per settings (and key).

    ``lm(settings, temperature=t)`` returns a cheap per-call copy carrying the knobs, so
    concurrent calls with different temperatures never see each other's settings.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: dict[str, Any] = {}

    def base(self, settings: LMSettings, api_key: str | None = None) -> Any:
        key_text = resolve_key(settings, api_key)
        fingerprint = hashlib.sha256((key_text or "").encode()).hexdigest()[:16]
        key = json.dumps([settings.to_mapping(), fingerprint], sort_keys=True)
        with self._lock:
            lm = self._base.get(key)
            if lm is None:
                lm = self._build(settings, key_text)
                if len(self._base) >= 16:  # a notebook rarely flips between more models
                    self._base.pop(next(iter(self._base)))
                self._base[key] = lm
            return lm

    @staticmethod
    def _build(settings: LMSettings, api_key: str | None) -> Any:
        from .cache import ensure_shared_cache
        from .environment import import_dspy

        dspy = import_dspy()
        if settings.cached:
            ensure_shared_cache()
        if settings.is_fake:
            from .fake import FakeEngine

            engine = FakeEngine(
                latency=settings.latency,
                chunk_delay=settings.chunk_delay,
                chunk_size=settings.chunk_size,
            )
            return dspy.LM(FAKE_MODEL_NAME, engine=engine, cache=settings.cached)
        kwargs: dict[str, Any] = {
            **settings.options,
            "cache": settings.cached,
            "engine": settings.engine,
            "num_retries": settings.num_retries,
        }
        if settings.api_base:
            kwargs["api_base"] = settings.api_base
        if api_key:
            kwargs["api_key"] = api_key
        try:
            return dspy.LM(settings.model, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"dspy.LM refused these settings ({exc}); nothing was changed"
            ) from exc

    def lm(
        self,
        settings: LMSettings,
        *,
        temperature: float | None,
        max_tokens: int | None = None,
        api_key: str | None = None,
    ) -> Any:
        knobs: dict[str, Any] = {}
        if temperature is not None:
            knobs["temperature"] = temperature
        tokens = max_tokens if max_tokens is not None else settings.max_tokens
        if tokens is not None:
            knobs["max_tokens"] = tokens
        return self.base(settings, api_key).copy(**knobs)
