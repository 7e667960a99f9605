"""Every task a checkpoint can hold, by the name it is saved under."""

from __future__ import annotations

from jaxgen.errors import JaxgenError
from jaxgen.train.classifier import ClassifierTask
from jaxgen.train.gan import GANTask
from jaxgen.train.task import Task
from jaxgen.train.vae import VAETask

TASKS: dict[str, type[Task]] = {task.name: task for task in (GANTask, VAETask, ClassifierTask)}


def task_class(name: str, workdir: str) -> type[Task]:
    """The task class a checkpoint of ``workdir`` names."""
    if name not in TASKS:
        raise JaxgenError(f"--workdir {workdir} holds an unknown kind of run ({name!r}).")
    return TASKS[name]
