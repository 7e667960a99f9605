"""Seed ensembles (jaxgen.train.ensemble): run r of an ensemble stepped by one program is the
solo run of seed + r, on one device and on eight."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import WIDTH, host_leaves

from jaxgen import parallel
from jaxgen.train import ensemble, gan_variants, program
from jaxgen.train.state import init_state, initial_state_on

RUNS, NUM_IMAGES = 2, 64
# Tolerances. Losses: the solo and the batched programs compute the same maths and may round
# differently in the last bits of a convolution's sums. Parameters after a step: each Adam
# update moves a parameter by at most lr the first time, so two roundings of it are at most
# 2 lr apart per update (infoGAN's third optimiser updates G and D a second time).
LOSS_ATOL = 1e-5


def _task(name):
    cls = gan_variants.task_class(name)
    return cls(cls.config_class(batch_size=16, seed=7, width=WIDTH))


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
    """The initial state of an ensemble of RUNS runs of ``task``'s config, replicated over
    ``mesh`` as the loop creates it."""
    runs = type(task)(dataclasses.replace(task.config, num_seeds=RUNS))
    with jax.set_mesh(mesh):
        return initial_state_on(runs, mesh)


def _assert_params_close(a, b, task):
    updates = 1 if task.tx_info is None else 2
    bound = 2 * updates * max(task.config.lr_d, task.config.lr_g)
    for x, y in zip(jax.tree.leaves((a.g.params, a.d.params)),
                    jax.tree.leaves((b.g.params, b.d.params))):
        assert np.abs(x - y).max() <= bound + 1e-4 * np.abs(y).max()


@pytest.mark.parametrize("name,runs_form", [
    ("GAN", "vmap"), ("WGAN_GP", "map"), ("infoGAN", "vmap")])
def test_run_r_of_an_ensemble_is_the_solo_run_of_seed_plus_r(name, runs_form, tiny_images):
    """The vanilla GAN, a critic that steps n_critic times per G step (with its penalty), and
    infoGAN's third optimiser, in both forms of the ensemble's program (map, CPU's; vmap,
    the accelerators'): each run's initialisation, shuffle, losses and first update are the
    solo run's. (The vanilla GAN's map form, through the whole loop: below.)"""
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


def test_runs_are_sharded_over_rows_of_devices_when_the_counts_divide(tiny_images,
                                                                      monkeypatch):
    """The 2-D mesh of runs x data: one row per run, or per device; none when neither count
    divides the other. Sharded, each device of the vmap program computes less than when every
    device steps every run (XLA's cost analysis of the compiled programs): the batch's work is
    split either way, but each device updates only its own run's parameters."""
    mesh = parallel.make_mesh(jax.devices()[:8])
    assert dict(parallel.runs_mesh(mesh, 2).shape) == {"runs": 2, "data": 4}
    assert dict(parallel.runs_mesh(mesh, 16).shape) == {"runs": 8, "data": 1}
    assert parallel.runs_mesh(mesh, 3) is None and parallel.runs_mesh(mesh, 1) is None
    task = _task("GAN")
    state = _ensemble(task, mesh)
    data = _data(task, tiny_images[:NUM_IMAGES], mesh)
    perm = jnp.zeros((RUNS, NUM_IMAGES), jnp.int32)

    def flops():
        with jax.set_mesh(mesh):
            step = program.build_train_step(task, mesh, NUM_IMAGES // 16, 1, num_runs=RUNS,
                                            runs_form="vmap")
            return step.lower(state, data, perm).compile().cost_analysis()["flops"]

    sharded = flops()
    monkeypatch.setattr(parallel, "runs_mesh", lambda mesh, num_runs: None)
    assert sharded < flops()


def test_an_unknown_form_of_the_runs_is_refused():
    with pytest.raises(ValueError, match="runs_form must be one of map, vmap"):
        program.build_train_step(_task("GAN"), parallel.make_mesh(jax.devices()[:1]), 4,
                                 num_runs=2, runs_form="scan")


@pytest.mark.parametrize("runs_form", program.RUNS_FORMS)
def test_eight_devices_match_one_for_an_ensemble(runs_form, tiny_images):
    """Each run data-parallel over the eight devices (map), or the two runs sharded over two
    rows of four devices (vmap: parallel.runs_mesh), against one device."""
    task = _task("GAN")
    images = tiny_images[:NUM_IMAGES]
    results = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        results[n] = _one_step(task, _ensemble(task, mesh), images, mesh, RUNS, runs_form)
    (perm1, (one, m1)), (perm8, (eight, m8)) = results[1], results[8]
    np.testing.assert_array_equal(perm1, perm8)
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], atol=LOSS_ATOL, err_msg=k)
    for r in range(RUNS):
        _assert_params_close(ensemble.run_state(eight, r).model,
                             ensemble.run_state(one, r).model, task)


# ------------------------------------------------------------------ the training loop
# The loop's tiny run (test_train_loop.py's config) as an ensemble of two: one device, 4 steps
# an epoch, so the solo run's programs are the ones that file compiles.
LOOP = dict(epochs=2, batch_size=16, log_every=2, width=WIDTH)
# Two loss curves that agree to the eye: within 1 % at every step.
CURVE_RTOL = 1e-2


def _train(workdir, images, logs=None, **settings):
    from jaxgen.train import loop
    from jaxgen.train.gan import GANConfig, GANTask

    task = GANTask(GANConfig(**{**LOOP, **settings}))
    return loop.train(task, images, str(workdir), parallel.make_mesh(jax.devices()[:1]),
                      log=(logs.append if logs is not None else lambda _: None))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_images):
    """An ensemble of seeds 3 and 4 trained for 2 epochs, and the same stopped after one."""
    workdir, first = (tmp_path_factory.mktemp(name) for name in ("ensemble", "first_epoch"))
    logs = []
    state, history = _train(workdir, tiny_images, logs, seed=3, num_seeds=2)
    _train(first, tiny_images, seed=3, num_seeds=2, epochs=1)
    return workdir, host_leaves(state), history, logs, first


def test_a_run_of_a_trained_ensemble_is_the_solo_run_of_its_seed(trained, tiny_images,
                                                                  tmp_path):
    """Through the loop's epochs (each run's shuffle, keys by step and epoch): run 1 of the
    ensemble of seeds 3, 4 trains as the solo run of seed 4 does, loss for loss: the first
    epoch's within rounding, and the whole curve, whose rounding differences GAN training
    amplifies step by step, to the eye (CURVE_RTOL), where seed 3's curve is not."""
    _, _, history, _, _ = trained
    _, solo = _train(tmp_path / "solo", tiny_images, seed=4)
    assert history.num_runs == 2
    first_epoch = len(solo.metrics["D_loss"]) // LOOP["epochs"]
    for k, values in solo.metrics.items():
        run1 = history.run(1).metrics[k]
        np.testing.assert_allclose(run1[:first_epoch], values[:first_epoch], rtol=1e-4,
                                   atol=1e-5, err_msg=k)
        np.testing.assert_allclose(run1, values, rtol=CURVE_RTOL, err_msg=k)
        assert not np.allclose(history.run(0).metrics[k], values, rtol=CURVE_RTOL)  # seed 3's


def test_an_ensemble_resumes_bit_identically(trained, tiny_images, tmp_path):
    import shutil

    workdir, expected, history, _, first = trained
    resumed = shutil.copytree(first, tmp_path / "run")
    logs = []
    state, resumed_history = _train(resumed, tiny_images, logs, seed=3, num_seeds=2)
    assert any("Resuming from the checkpoint of epoch 1" in line for line in logs)
    for a, b in zip(host_leaves(state), expected):
        np.testing.assert_array_equal(a, b)
    assert resumed_history.metrics == history.metrics


def test_an_ensemble_killed_during_an_epoch_resumes_bit_identically(tmp_path):
    """gan_mnist.py --num-seeds 2 killed with SIGKILL as soon as epoch 1's checkpoint is written
    (so during epoch 2 or its save): the same command again ends where an uninterrupted run of
    it ends, bit for bit, with the same losses."""
    import json
    import signal
    import time

    from helpers import ScriptProcess, run_script, write_idx_dataset

    from jaxgen.runs.restore import restore_run

    data_dir = write_idx_dataset(str(tmp_path / "idx"))

    def command(workdir):
        return ("gan_mnist.py", "--data-dir", data_dir, "--epochs", 4, "--batch-size", 16,
                "--log-every", 4, "--width", WIDTH, "--seed", 3, "--num-seeds", 2, "--workdir",
                workdir)

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    procs = [ScriptProcess(*command(killed)), ScriptProcess(*command(whole))]
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "1").is_dir() and procs[0].proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    procs[0].proc.send_signal(signal.SIGKILL)
    stopped, finished = (p.wait() for p in procs)
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-3000:]  # killed mid-run
    assert finished.returncode == 0, finished.stderr[-3000:]
    rerun = run_script(*command(killed))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming from the checkpoint of epoch" in rerun.stdout
    histories = [json.load(open(w / "GAN_history.json")) for w in (killed, whole)]
    losses = [{k: v for k, v in h.items() if "time" not in k} for h in histories]
    assert losses[0] == losses[1] and losses[0]
    states = [restore_run(str(w), devices=jax.devices()[:1])[1] for w in (killed, whole)]
    for a, b in zip(host_leaves(states[0]), host_leaves(states[1])):
        np.testing.assert_array_equal(a, b)


def test_another_number_of_seeds_is_a_conflict_and_changes_nothing(trained, tiny_images):
    from jaxgen.errors import JaxgenError

    workdir = trained[0]
    def files():  # (the lock file says when the last command started)
        return {p.name: p.read_bytes() for p in workdir.iterdir()
                if p.is_file() and p.name != ".lock"}

    before = files()
    with pytest.raises(JaxgenError, match=r"num_seeds=2 \(this command: 3\)"):
        _train(workdir, tiny_images, seed=3, num_seeds=3)
    assert files() == before


def test_an_ensemble_shows_every_run(trained):
    """Log lines give the runs' mean [min, max]; metrics.jsonl, the history file and
    TensorBoard (a directory per run) give every run's values; the grid a row per run."""
    import json
    import re

    from helpers import grid_tiles, tensorboard_events

    workdir, _, history, logs, _ = trained
    assert any("Training 2 runs of seeds 3..4 in one program" in line for line in logs)
    line = next(line for line in logs if line.startswith("Epoch: [ 2] [   4/   4]"))
    shown = re.search(r"D_loss: ([\d.]+) \[([\d.]+), ([\d.]+)\]", line).groups()
    last = [history.run(r).metrics["D_loss"][-1] for r in range(2)]
    assert [float(v) for v in shown] == pytest.approx([np.mean(last), min(last), max(last)],
                                                      abs=1e-7)
    rows = [json.loads(row) for row in open(workdir / "metrics.jsonl")]
    for r in range(2):
        steps = [row for row in rows if row.get("run") == r and "step" in row]
        assert [(row["epoch"], row["step"]) for row in steps] == [(1, 2), (1, 4), (2, 2),
                                                                  (2, 4)]
        assert [row["G_loss"] for row in steps] == [history.run(r).metrics["G_loss"][i]
                                                    for i in (1, 3, 5, 7)]
        events = tensorboard_events(workdir, f"run{r}")
        assert [v for _, v in events["G_loss"]] == pytest.approx(
            [row["G_loss"] for row in steps], rel=1e-6)
    saved = json.load(open(workdir / "GAN_history.json"))
    assert saved["D_loss"] == history.metrics["D_loss"] and len(saved["D_loss"]) == 2
    assert "epoch_time" in tensorboard_events(workdir)  # what the runs share
    tiles = grid_tiles(workdir / "GAN_epoch002.png", 16, 8)  # two rows: each run's first 8
    assert not np.array_equal(tiles[:8], tiles[8:])


def test_restoring_an_ensemble_gives_every_run_or_one(trained, tmp_path):
    from jaxgen.errors import JaxgenError
    from jaxgen.runs.restore import restore_run, sample_images

    workdir, expected, _, _, _ = trained
    one = jax.devices()[:1]
    task, state = restore_run(str(workdir), devices=one)
    assert task.config.num_seeds == 2 and state.step.shape == (2,)
    task1, state1 = restore_run(str(workdir), devices=one, run=1)
    assert (task1.config.seed, task1.config.num_seeds) == (4, 1)
    for a, b in zip(host_leaves(state1), expected):
        np.testing.assert_array_equal(a, b[1])
    images = sample_images(str(workdir), 8, devices=one, run=1)
    assert images.shape == (8, 28, 28, 1)
    with pytest.raises(JaxgenError, match=r"seed ensemble of 2 runs \(seeds 3..4\); pass "
                                          r"--run R \(0..1\)"):
        sample_images(str(workdir), 8, devices=one)
    with pytest.raises(JaxgenError, match=r"--run 2 is not a run of .* pass --run 0..1"):
        restore_run(str(workdir), devices=one, run=2)


def test_an_ensemble_that_cannot_fit_is_refused_before_it_starts(monkeypatch, tiny_images,
                                                                   tmp_path):
    from jaxgen.errors import JaxgenError

    monkeypatch.setattr(parallel, "device_memory_limit", lambda mesh: 2 ** 20)
    with pytest.raises(JaxgenError, match=r"--num-seeds 4 needs about .* GiB a device .* "
                                          r"more than the 0.0 GiB .*; pass --num-seeds 1 or "
                                          r"fewer"):
        _train(tmp_path / "big", tiny_images, num_seeds=4)
    assert not (tmp_path / "big").exists()


def test_a_diverging_run_is_named(tmp_path):
    from jaxgen.checkpoint import Checkpoints
    from jaxgen.errors import JaxgenError
    from jaxgen.train import checks

    task = _task("GAN")  # seed 7
    task = type(task)(task.config.__class__(**{**task.config.to_dict(), "num_seeds": 3}))
    ckpts = Checkpoints(str(tmp_path / "checkpoints"))
    with pytest.raises(JaxgenError, match=r"G_loss became nan at epoch 2, step 5 in run 2 "
                                          r"\(seed 9\)"):
        checks.check_finite({"D_loss": np.ones(3), "G_loss": np.array([1.0, 2.0, np.nan])},
                            2, 5, ckpts, task)
    ckpts.close()


def test_each_run_is_updated_after_its_epoch_with_its_own_metrics():
    """A task's update_after_epoch (BEGAN's learning rate) sees each run's metrics alone."""
    from jaxgen.train.task import Task

    class Halving(Task):
        name, metric_names = "Halving", ("loss",)

        def __init__(self, config):
            self.config = config

        def init(self, key):
            return {"lr": jnp.ones(())}

        def train_step(self, model, images, key, labels=None):
            return model, {"loss": jnp.zeros(())}

        def update_after_epoch(self, model, metrics):
            if metrics["loss"].mean() > 1:
                return {"lr": model["lr"] / 2}, ["halved"]
            return model, []

    from jaxgen.train.task import TrainConfig
    task = Halving(TrainConfig(num_seeds=3))
    model = {"lr": jnp.ones(3)}
    model, lines = ensemble.update_after_epoch(
        task, model, {"loss": np.array([[2.0, 2.0], [0.0, 0.0], [3.0, 1.0]])})
    np.testing.assert_array_equal(model["lr"], [0.5, 1.0, 0.5])
    assert lines == ["run 0: halved", "run 2: halved"]


def test_seeds_beyond_32_bits_are_refused():
    from jaxgen.errors import JaxgenError
    from jaxgen.train.task import TrainConfig

    TrainConfig(seed=2 ** 32 - 3, num_seeds=3).validate()
    with pytest.raises(JaxgenError, match="--num-seeds 3 from --seed 4294967294 reaches seed "
                                          "4294967296, above 4294967295; pass a lower --seed"):
        TrainConfig(seed=2 ** 32 - 2, num_seeds=3).validate()


def test_the_classifier_script_offers_no_ensembles(tmp_path, capsys):
    from helpers import run_in_process

    code, _, err = run_in_process("train_classifier.py", "--num-seeds", 2, "--workdir",
                                  tmp_path / "w", capsys=capsys)
    assert code == 2 and "unrecognized arguments: --num-seeds 2" in err
