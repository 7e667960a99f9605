"""Seed ensembles (jaxgen.train.ensemble): run r of an ensemble stepped by one program is the
solo run of seed + r, on one device and on eight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import host_leaves

from jaxgen import parallel
from jaxgen.train import ensemble, gan_variants, program
from jaxgen.train.state import init_state

RUNS, NUM_IMAGES = 2, 64
# Tolerances. Losses: the solo and the batched programs compute the same maths and may round
# differently in the last bits of a convolution's sums. Parameters after a step: each Adam
# update moves a parameter by at most lr the first time, so two roundings of it are at most
# 2 lr apart per update (infoGAN's third optimiser updates G and D a second time).
LOSS_ATOL = 1e-5


def _task(name):
    cls = gan_variants.task_class(name)
    return cls(cls.config_class(batch_size=16, seed=7))


def _data(task, images, mesh):
    data = parallel.put_replicated(images, mesh)
    if task.needs_labels:
        labels = np.arange(NUM_IMAGES, dtype=np.int32) % 10
        data = (data, parallel.put_replicated(labels, mesh))
    return data


def _one_step(task, state, images, mesh, num_runs, runs_form=None):
    """The first step of epoch 1 of ``state`` (a solo state, or an ensemble's): the epoch's
    shuffle, the step, on the host."""
    with jax.set_mesh(mesh):
        perm = program.build_permutation(mesh, NUM_IMAGES, num_runs)(state.rng, jnp.int32(1))
        step = program.build_train_step(task, mesh, NUM_IMAGES // 16, 1, num_runs=num_runs,
                                        runs_form=runs_form)
        state, metrics = step(state, _data(task, images, mesh), perm)
    return np.asarray(perm), jax.tree.map(np.asarray, (state, metrics))


def _ensemble(task, mesh):
    return jax.jit(lambda: ensemble.init_ensemble(task, RUNS),
                   out_shardings=parallel.replicated(mesh))()


def _assert_params_close(a, b, task):
    updates = 1 if task.tx_info is None else 2
    bound = 2 * updates * max(task.config.lr_d, task.config.lr_g)
    for x, y in zip(jax.tree.leaves((a.g.params, a.d.params)),
                    jax.tree.leaves((b.g.params, b.d.params))):
        assert np.abs(x - y).max() <= bound + 1e-4 * np.abs(y).max()


@pytest.mark.parametrize("name,runs_form", [
    ("GAN", "map"), ("GAN", "vmap"), ("WGAN_GP", "map"), ("infoGAN", "vmap")])
def test_run_r_of_an_ensemble_is_the_solo_run_of_seed_plus_r(name, runs_form, tiny_images):
    """The vanilla GAN, a critic that steps n_critic times per G step (with its penalty), and
    infoGAN's third optimiser, in both forms of the ensemble's program (map, CPU's; vmap,
    the accelerators'): each run's initialisation, shuffle, losses and first update are the
    solo run's."""
    task = _task(name)
    mesh = parallel.make_mesh(jax.devices()[:1])
    images = tiny_images[:NUM_IMAGES]
    start = _ensemble(task, mesh)
    started = host_leaves(start)
    perms, (state, metrics) = _one_step(task, start, images, mesh, RUNS, runs_form)
    assert ensemble.seeds(task, RUNS) == [7, 8]
    solo_init = jax.jit(lambda seed: init_state(task, seed))  # one program for every seed
    for r, seed in enumerate(ensemble.seeds(task, RUNS)):
        solo = solo_init(seed)
        for x, y in zip(host_leaves(solo), started):
            np.testing.assert_allclose(x, y[r], rtol=1e-6, atol=1e-7)
        perm, (solo_after, solo_metrics) = _one_step(task, solo, images, mesh, 1)
        np.testing.assert_array_equal(perms[r], perm)  # its own data order
        for k, v in solo_metrics.items():
            np.testing.assert_allclose(metrics[k][r], v, atol=LOSS_ATOL, err_msg=k)
        _assert_params_close(ensemble.run_state(state, r).model, solo_after.model, task)
    assert len({float(metrics["D_loss"][r, 0]) for r in range(RUNS)}) == RUNS  # runs differ


def test_an_unknown_form_of_the_runs_is_refused():
    with pytest.raises(ValueError, match="runs_form must be one of map, vmap"):
        program.build_train_step(_task("GAN"), parallel.make_mesh(jax.devices()[:1]), 4,
                                 num_runs=2, runs_form="scan")


def test_eight_devices_match_one_for_an_ensemble(tiny_images):
    task = _task("GAN")
    images = tiny_images[:NUM_IMAGES]
    results = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        results[n] = _one_step(task, _ensemble(task, mesh), images, mesh, RUNS)
    (perm1, (one, m1)), (perm8, (eight, m8)) = results[1], results[8]
    np.testing.assert_array_equal(perm1, perm8)
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], atol=LOSS_ATOL, err_msg=k)
    for r in range(RUNS):
        _assert_params_close(ensemble.run_state(eight, r).model,
                             ensemble.run_state(one, r).model, task)
