"""Task suites (configs/suites/<name>.yaml): several environments that one policy is trained and
evaluated on, told the task by its instruction only.

    tasks: [env ids]          env_kwargs: {shared constructor arguments}
    difficulty: {bucket: [env ids]}  (optional)   reference: {who: {bucket: success}}  (optional)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla.config import find_config, load_yaml
from vla.errors import ConfigError


@dataclass
class Suite:
    name: str
    tasks: list[str]
    env_kwargs: dict = field(default_factory=dict)
    task_env_kwargs: dict[str, dict] = field(default_factory=dict)  # per task, over env_kwargs
    difficulty: dict[str, list[str]] = field(default_factory=dict)
    reference: dict = field(default_factory=dict)

    def bucket_of(self, task: str) -> str | None:
        return next((bucket for bucket, tasks in self.difficulty.items() if task in tasks), None)

    def env_kwargs_of(self, task: str) -> dict:
        return {**self.env_kwargs, **self.task_env_kwargs.get(task, {})}


def data_suite(env_args: dict) -> Suite | None:
    """The tasks a store mixes (several collections into one file, no suite file), each with the settings it
    was demonstrated with; None for a store of one task."""
    tasks = env_args.get("tasks", [])
    if len(tasks) < 2:
        return None
    return Suite(name="the data's tasks", tasks=list(tasks),
                 task_env_kwargs={task: dict(kw) for task, kw in env_args.get("task_env_kwargs", {}).items()})


def load_suite(name: str) -> Suite:
    path = find_config(name, "suites")
    data = load_yaml(path)
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{path}: 'tasks' must list environment ids")
    unknown = sorted({t for bucket in (data.get("difficulty") or {}).values() for t in bucket} - set(tasks))
    if unknown:
        raise ConfigError(f"{path}: difficulty names tasks the suite does not hold: {unknown}")
    return Suite(name=path.stem, tasks=list(tasks), env_kwargs=dict(data.get("env_kwargs") or {}),
                 difficulty=dict(data.get("difficulty") or {}), reference=dict(data.get("reference") or {}))
