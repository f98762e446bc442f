"""The objectives a study can have: language modelling and every algorithmic task of
minigpt.tasks.TASKS (a task added there is an objective with no further line), plus any
registered by a plug-in."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..tasks import TASKS
from .lm import LanguageModelling
from .objective import Objective
from .task import TaskObjective

REGISTRY: dict[str, Callable[[], Objective]] = {"lm": LanguageModelling}


def register(name: str, factory: Callable[[], Objective]) -> None:
    REGISTRY[name] = factory


def _with_tasks() -> dict[str, Callable[[], Objective]]:
    for name in TASKS:
        REGISTRY.setdefault(name, lambda name=name: TaskObjective(name))
    return REGISTRY


def objective_names() -> list[str]:
    return list(_with_tasks())


def get_objective(name: str) -> Objective:
    if name not in _with_tasks():
        raise ConfigError(f"unknown task {name!r}; choose lm or one of "
                          f"{', '.join(n for n in REGISTRY if n != 'lm')}.")
    return REGISTRY[name]()
