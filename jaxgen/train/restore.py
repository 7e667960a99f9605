"""Restoring a finished or running experiment from its workdir, for sampling and evaluation."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxgen import parallel
from jaxgen.checkpoint import Checkpoints
from jaxgen.errors import JaxgenError
from jaxgen.train.classifier import ClassifierConfig, ClassifierTask
from jaxgen.train.gan import GANConfig, GANTask
from jaxgen.train.loop import Task, TrainState, abstract_state, checkpoint_dir
from jaxgen.train.vae import VAEConfig, VAETask

# Checkpoint tag -> (config class, task class).
TASKS = {"GAN": (GANConfig, GANTask), "VAE": (VAEConfig, VAETask),
         "Classifier": (ClassifierConfig, ClassifierTask)}


def restore_run(workdir: str, devices: Optional[list] = None) -> tuple[Task, TrainState]:
    """The task (with the run's own config) and the newest readable train state of ``workdir``,
    replicated over ``devices`` (default: all), whatever device count trained it."""
    directory = checkpoint_dir(os.path.abspath(workdir))
    if not os.path.isdir(directory):
        raise JaxgenError(f"--workdir {workdir} holds no checkpoints ({directory} is missing); "
                          "pass the --workdir of a training run.")
    ckpts = Checkpoints(directory, read_only=True)
    epochs = ckpts.epochs()
    if not epochs:
        raise JaxgenError(f"--workdir {workdir} holds no finished checkpoint yet; train at least "
                          "one epoch first.")
    mesh = parallel.make_mesh(devices)
    task_box = {}

    def target(meta: dict):
        if meta.get("task") not in TASKS:
            raise JaxgenError(f"--workdir {workdir} holds an unknown kind of run "
                              f"({meta.get('task')!r}).")
        config_cls, task_cls = TASKS[meta["task"]]
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(meta["config"]) - known)
        if unknown:
            raise JaxgenError(f"--workdir {workdir} was written by another version of jaxgen "
                              f"(config fields {', '.join(unknown)} are unknown here); restore "
                              "it with that version.")
        # The config, and so the shapes to restore, come from the checkpoint itself.
        task_box["task"] = task_cls(config_cls(**meta["config"]))
        return abstract_state(task_box["task"], mesh)

    with jax.set_mesh(mesh):
        _, state, _ = ckpts.restore_latest(target, quarantine=False)
    ckpts.close()
    return task_box["task"], state


def sample_images(workdir: str, num: int, seed: int = 0, devices: Optional[list] = None,
                  batch_size: int = 1000) -> np.ndarray:
    """``num`` images in [-1, 1], shape (num, 28, 28, 1), from the generative model of the newest
    readable checkpoint in ``workdir`` (GAN: its generator; VAE: prior samples through the
    decoder), drawn with key ``PRNGKey(seed)``. The same (seed, num) gives the same images."""
    if num < 1:
        raise JaxgenError(f"--num must be a positive integer, got {num}.")
    task, state = restore_run(workdir, devices=devices)
    if not is_generative(task):
        raise JaxgenError(f"--workdir {workdir} holds a {task.name} run, which is not a "
                          "generative model; pass the --workdir of a GAN or VAE run.")
    return draw_samples(task, state.model, num, jax.random.PRNGKey(seed), batch_size)


def is_generative(task) -> bool:
    """Whether ``task`` (a Task or a Task class) can draw samples (it defines
    ``sample_images``)."""
    task_cls = task if isinstance(task, type) else type(task)
    return task_cls.sample_images is not Task.sample_images


def draw_samples(task: Task, model, num: int, key: jax.Array,
                 batch_size: int = 1000) -> np.ndarray:
    """``num`` samples of a generative ``task`` with parameters ``model`` (on a mesh, as training
    and ``restore_run`` leave them, or on the host) as a host array in [-1, 1], drawn
    ``batch_size`` at a time; chunk i uses ``fold_in(key, i)``. Every sampler in jaxgen
    (``sample_images``, evaluate.py, evaluation during training, the ablation) draws through
    here, so the same model, key and num give the same images everywhere."""
    if not is_generative(task):
        raise JaxgenError(f"a {task.name} model is not a generative model: it draws no samples.")
    if num < 1:
        raise JaxgenError(f"the number of samples must be a positive integer, got {num}.")
    draw = _sampler(task, _mesh_of(model))
    chunks = [parallel.to_host(draw(model, jax.random.fold_in(key, i),
                                    min(batch_size, num - start)))
              for i, start in enumerate(range(0, num, batch_size))]
    return np.concatenate(chunks)


def _mesh_of(model) -> Mesh:
    sharding = getattr(jax.tree.leaves(model)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    return parallel.make_mesh(jax.devices()[:1])


@functools.lru_cache(maxsize=8)
def _sampler(task: Task, mesh: Mesh):
    """The jitted ``task.sample_images`` on ``mesh``, compiled once per (task, mesh, num)."""
    return jax.jit(task.sample_images, static_argnums=2, out_shardings=parallel.replicated(mesh),
                   compiler_options=parallel.compiler_options(mesh))
