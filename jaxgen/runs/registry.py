"""Every task a checkpoint can hold, by the name it is saved under: each registered GAN
objective (``jaxgen.train.gan_variants.register``), the VAE, the classifier, and any task of a
user's own registered with :func:`register_task`. Restoring, sampling, evaluation and resume
find a run's task here by the name its checkpoint carries."""

from __future__ import annotations

from jaxgen.errors import JaxgenError
from jaxgen.train import gan_variants
from jaxgen.train.classifier import ClassifierTask
from jaxgen.train.task import Task
from jaxgen.train.vae import VAETask

_TASKS: dict[str, type[Task]] = {}


def register_task(task: type[Task]) -> type[Task]:
    """Makes runs of ``task`` (a :class:`~jaxgen.train.task.Task` subclass) restorable by its
    ``name``; returns it, so it also serves as a class decorator. A name already taken by
    another task, or by a GAN of ``gan_variants``, is an error; registering the same class again
    does nothing."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"register_task takes a Task subclass, got {task!r}")
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{task.__name__} needs a class attribute name (its checkpoint tag)")
    taken = _TASKS.get(name) or (gan_variants.task_class(name)
                                 if name in gan_variants.OBJECTIVES else None)
    if taken is not None and taken is not task:
        raise ValueError(f"the task name {name!r} is taken by {taken.__name__}; give "
                         f"{task.__name__} another name")
    _TASKS[name] = task
    return task


def unregister_task(name: str) -> None:
    """Forgets the task registered as ``name`` (e.g. a test's own)."""
    _TASKS.pop(name, None)


register_task(VAETask)
register_task(ClassifierTask)


def task_names() -> list[str]:
    return list(gan_variants.OBJECTIVES) + list(_TASKS)


def task_class(name: str, workdir: str) -> type[Task]:
    """The task class a checkpoint of ``workdir`` names."""
    if name in gan_variants.OBJECTIVES:
        return gan_variants.task_class(name)
    if name in _TASKS:
        return _TASKS[name]
    raise JaxgenError(f"--workdir {workdir} holds an unknown kind of run ({name!r}); a task of "
                      "your own is found once jaxgen.runs.registry.register_task has registered "
                      "it in this process.")
