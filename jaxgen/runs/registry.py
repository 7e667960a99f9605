"""Every task a checkpoint can hold, by the name it is saved under: each registered GAN
objective (``jaxgen.train.gan_variants.OBJECTIVES``), the VAE and the classifier."""

from __future__ import annotations

from jaxgen.errors import JaxgenError
from jaxgen.train import gan_variants
from jaxgen.train.classifier import ClassifierTask
from jaxgen.train.task import Task
from jaxgen.train.vae import VAETask

OTHER_TASKS: dict[str, type[Task]] = {task.name: task for task in (VAETask, ClassifierTask)}


def task_names() -> list[str]:
    return list(gan_variants.OBJECTIVES) + list(OTHER_TASKS)


def task_class(name: str, workdir: str) -> type[Task]:
    """The task class a checkpoint of ``workdir`` names."""
    if name in gan_variants.OBJECTIVES:
        return gan_variants.task_class(name)
    if name in OTHER_TASKS:
        return OTHER_TASKS[name]
    raise JaxgenError(f"--workdir {workdir} holds an unknown kind of run ({name!r}).")
