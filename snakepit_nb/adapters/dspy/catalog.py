"""The optimizers on offer, what each accepts, and how each is built and compiled.

Each entry says which settings a caller may pass to the optimizer (an allow-list: nothing
else passes), which go to its constructor and which to ``compile``, the defaults that suit
small exploratory data sets, and which extra models it can use:

* ``teacher``: the model that bootstraps demos (``teacher_settings=dict(lm=...)``);
* ``prompt``: the model that proposes instructions (MIPROv2, COPRO, SIMBA);
* ``reflection``: the model GEPA asks to reflect on scored responses (default: the task model).

==================================  ===========================================================
``LabeledFewShot``                  ``k`` labeled demos
``BootstrapFewShot``                bootstrapped (and labeled) demos; teacher
``BootstrapFewShotWithRandomSearch``  several bootstrapped candidates, the best on ``valset``
``COPRO``                           instructions, by breadth x depth proposals; prompt model
``MIPROv2``                         instructions and demos together, Bayesian search (optuna);
                                    prompt and teacher models
``GEPA``                            instructions evolved from reflection on scored responses;
                                    reflection model
``SIMBA``                           demos and rules from contrasting good and bad trajectories;
                                    prompt and teacher models
==================================  ===========================================================
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["OPTIMIZERS", "ROLES", "OptimizerSpec", "build", "check_params", "check_roles"]

ROLES = ("teacher", "prompt", "reflection")
_BOOTSTRAP = ("max_bootstrapped_demos", "max_labeled_demos", "max_rounds", "max_errors")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its settings (constructor and compile), defaults, models, needs."""

    init: tuple[str, ...] = ()
    compile: tuple[str, ...] = ()
    takes_metric: bool = True
    takes_valset: bool = False
    roles: tuple[str, ...] = ()
    needs: str | None = None  # a module that must be importable (an optional dependency)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    compile_defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> tuple[str, ...]:
        return self.init + self.compile


OPTIMIZERS: Mapping[str, OptimizerSpec] = {
    "LabeledFewShot": OptimizerSpec(init=("k",), takes_metric=False),
    "BootstrapFewShot": OptimizerSpec(init=(*_BOOTSTRAP, "metric_threshold"), roles=("teacher",)),
    "BootstrapFewShotWithRandomSearch": OptimizerSpec(
        init=(
            *_BOOTSTRAP,
            "metric_threshold",
            "num_candidate_programs",
            "num_threads",
            "stop_at_score",
        ),
        takes_valset=True,
        roles=("teacher",),
    ),
    "COPRO": OptimizerSpec(
        init=("breadth", "depth", "init_temperature"),
        roles=("prompt",),
    ),
    "MIPROv2": OptimizerSpec(
        init=(
            "auto",
            "num_candidates",
            "max_bootstrapped_demos",
            "max_labeled_demos",
            "init_temperature",
            "max_errors",
            "metric_threshold",
            "num_threads",
            "seed",
        ),
        compile=(
            "num_trials",
            "minibatch",
            "minibatch_size",
            "minibatch_full_eval_steps",
            "program_aware_proposer",
            "data_aware_proposer",
            "tip_aware_proposer",
            "fewshot_aware_proposer",
            "view_data_batch_size",
        ),
        takes_valset=True,
        roles=("prompt", "teacher"),
        needs="optuna",
        defaults={"auto": None, "num_candidates": 3, "max_bootstrapped_demos": 2},
        compile_defaults={"num_trials": 6, "minibatch": False},
    ),
    "GEPA": OptimizerSpec(
        init=(
            "auto",
            "max_full_evals",
            "max_metric_calls",
            "reflection_minibatch_size",
            "candidate_selection_strategy",
            "skip_perfect_score",
            "use_merge",
            "max_merge_invocations",
            "num_threads",
            "seed",
        ),
        takes_valset=True,
        roles=("reflection",),
        defaults={"max_full_evals": 4},
    ),
    "SIMBA": OptimizerSpec(
        init=(
            "bsize",
            "num_candidates",
            "max_steps",
            "max_demos",
            "temperature_for_sampling",
            "temperature_for_candidates",
            "num_threads",
        ),
        compile=("seed",),
        roles=("prompt", "teacher"),
        defaults={"bsize": 8, "num_candidates": 4, "max_steps": 4},
    ),
}
_BUDGETS = ("auto", "max_full_evals", "max_metric_calls")


def check_params(optimizer: object, params: Mapping[str, object] | None) -> dict[str, object]:
    """The caller's settings for ``optimizer``, validated against its allow-list."""
    if optimizer not in OPTIMIZERS:
        raise InvalidArgumentError(
            f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    spec = OPTIMIZERS[str(optimizer)]
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        raise InvalidArgumentError(
            f"{optimizer} needs the package {spec.needs!r}, which is not installed in the "
            "worker's Python; install it with `pip install snakepit_nb[dspy]`"
        )
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise InvalidArgumentError(
            f"{optimizer} does not take {', '.join(unknown)}; it takes {', '.join(spec.params)}"
        )
    return params


def check_roles(optimizer: str, roles: Mapping[str, object]) -> None:
    """Refuse a model for a role the optimizer has no use for."""
    spec = OPTIMIZERS[optimizer]
    unused = sorted(r for r, v in roles.items() if v is not None and r not in spec.roles)
    if unused:
        uses = ", ".join(f"{r}_model" for r in spec.roles) or "no extra models"
        raise InvalidArgumentError(
            f"{optimizer} does not use a {' or '.join(unused)} model; it uses {uses}; "
            "nothing was changed"
        )


def build(
    optimizer: str,
    params: Mapping[str, Any],
    *,
    metric: Any,
    task_lm: Any,
    models: Mapping[str, Any],
    trainset: list[Any],
    valset: list[Any],
    num_threads: int,
) -> tuple[Any, dict[str, Any]]:
    """The DSPy optimizer object and the keyword arguments for its ``compile``."""
    import dspy

    spec = OPTIMIZERS[optimizer]
    given = dict(params)
    init = {k: v for k, v in given.items() if k in spec.init}
    compile_kwargs = {k: v for k, v in given.items() if k in spec.compile}
    defaults = dict(spec.defaults)
    compile_defaults = dict(spec.compile_defaults)
    if optimizer == "MIPROv2" and init.get("auto") is not None:
        # auto chooses the number of candidates and trials itself.
        defaults.pop("num_candidates", None)
        compile_defaults.pop("num_trials", None)
    if optimizer == "GEPA" and any(k in init for k in _BUDGETS):
        defaults.pop("max_full_evals", None)
    if optimizer == "SIMBA":
        defaults["bsize"] = min(int(init.get("bsize", defaults["bsize"])), len(trainset))
    init = {**defaults, **init}
    compile_kwargs = {**compile_defaults, **compile_kwargs}
    if spec.takes_metric:
        init["metric"] = metric
    teacher = models.get("teacher")
    if teacher is not None:
        init["teacher_settings"] = {"lm": teacher}
    if "prompt" in spec.roles:
        prompt = models.get("prompt")
        if prompt is not None:
            init["prompt_model"] = prompt
    if optimizer == "MIPROv2":
        init.setdefault("prompt_model", task_lm)
        init["task_model"] = task_lm
        init.setdefault("num_threads", num_threads)
        init["verbose"] = False
    if optimizer == "GEPA":
        init["reflection_lm"] = models.get("reflection") or task_lm
        init.setdefault("num_threads", num_threads)
    if optimizer == "SIMBA":
        init.setdefault("num_threads", num_threads)
    if spec.takes_valset:
        compile_kwargs["valset"] = valset
    if optimizer == "COPRO":
        compile_kwargs["eval_kwargs"] = {"num_threads": num_threads, "display_progress": False}
    try:
        teleprompter = getattr(dspy, optimizer)(**init)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{optimizer} refused these settings ({exc}); nothing was changed"
        ) from exc
    return teleprompter, compile_kwargs
