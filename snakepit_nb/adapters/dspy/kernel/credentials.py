"""The model's key, on the notebook side: in memory or in the kernel's environment, never stored.

``configure_lm(..., api_key="sk-...")`` keeps the key in this object (in the kernel's memory
only) and ``configure_lm(...)`` without one reads the environment variable (``api_key_env``,
else the provider's usual ``<PROVIDER>_API_KEY``) *at each call*, so a key set with
``os.environ[...] = ...`` after the pool started is used from the next call on. Every call
that may reach the model carries the key as an argument; it is never written to a session
variable, the history, or a result.
"""

from __future__ import annotations

import os
from typing import Any

from snakepit_nb.adapters.dspy.models.fake import FAKE_MODEL_NAME
from snakepit_nb.adapters.dspy.models.lm import LM_VARIABLE, default_key_env

__all__ = ["Credentials"]


class Credentials:
    """Resolves the key to send with a call (None: let the worker decide)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._key: str | None = None
        self._env: str | None = None
        self._model: str | None = None
        self._known = False

    def __repr__(self) -> str:  # never the key itself
        source = "a key in memory" if self._key else f"${self.env_name or '-'}"
        return f"<Credentials {self._model or '?'}: {source}>"

    def configured(self, model: str, api_key: str | None, api_key_env: str | None) -> None:
        """What ``configure_lm`` was given (the key stays here, in memory)."""
        self._model, self._key, self._env, self._known = model, api_key, api_key_env, True

    @property
    def env_name(self) -> str | None:
        if self._model is None or self._model == FAKE_MODEL_NAME:
            return None
        return self._env or default_key_env(self._model)

    def _learn(self) -> None:
        # A handle made for a session configured elsewhere: read the settings once.
        self._known = True
        settings = self._session.vars.get(LM_VARIABLE, None)
        if isinstance(settings, dict):
            self._model = str(settings.get("model") or FAKE_MODEL_NAME)
            env = settings.get("api_key_env")
            self._env = str(env) if env else None

    def key(self) -> str | None:
        """The key for the next call: the one given, else the kernel's environment variable."""
        if not self._known:
            self._learn()
        if self._key:
            return self._key
        name = self.env_name
        return os.environ.get(name) or None if name else None

    def arguments(self) -> dict[str, Any]:
        """``{"api_key": ...}`` to add to a call, or nothing."""
        key = self.key()
        return {"api_key": key} if key else {}
