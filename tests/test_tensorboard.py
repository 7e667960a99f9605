"""TensorBoard event files: read back with TensorFlow's own reader, after a run, after a resume
and after a run killed mid-epoch (its stale events replaced)."""

import errno

import jax
import numpy as np
import pytest
from helpers import WIDTH, run_in_process, write_idx_dataset
from helpers import tensorboard_events as _events
from PIL import Image

from jaxgen import parallel, tensorboard
from jaxgen.train import loop
from jaxgen.train.gan import GANConfig, GANTask

CONFIG = GANConfig(epochs=2, batch_size=16, log_every=2, width=WIDTH)  # 4 steps, 2 logged


def _probe(task, state, epoch, workdir):
    """An epoch hook returning scalars, as an evaluation does."""
    return {"probe/epoch": 10.0 * epoch, "probe/step": float(state.step)}


def _train(workdir, images, config=CONFIG, n_devices=1):
    mesh = parallel.make_mesh(jax.devices()[:n_devices])
    return loop.train(GANTask(config), images, str(workdir), mesh, log=lambda _: None,
                      epoch_hooks=[_probe])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_images):
    workdir = tmp_path_factory.mktemp("board")
    _, history = _train(workdir, tiny_images)
    return workdir, history


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_images):
    """Epoch 1; then what a killed run leaves (stale events of an epoch 2 that never finished)
    and a file named like a grid that is no picture; then the resume to epoch 2."""
    workdir = tmp_path_factory.mktemp("resumed")
    _train(workdir, tiny_images, GANConfig(**{**CONFIG.to_dict(), "epochs": 1}))
    stale = tensorboard.EventFile(str(workdir / "tensorboard"))
    stale.scalars(6, {"D_loss": 123.0, "G_loss": 456.0})
    stale.close()
    (workdir / "GAN_notes_epoch001.png").write_text("not a picture")
    _train(workdir, tiny_images)
    return workdir


def test_a_run_writes_its_logged_losses_epoch_times_and_grids(uninterrupted):
    workdir, history = uninterrupted
    events = _events(workdir)
    for name in ("D_loss", "G_loss"):  # the logged steps: 2 and 4 of each epoch
        assert [s for s, _ in events[name]] == [2, 4, 6, 8]
        expected = [history.metrics[name][i] for i in (1, 3, 5, 7)]
        np.testing.assert_allclose([v for _, v in events[name]], expected, rtol=1e-6)
    assert [s for s, _ in events["epoch_time"]] == [4, 8]
    np.testing.assert_allclose([v for _, v in events["epoch_time"]], history.per_epoch_time,
                               rtol=1e-6)
    assert [s for s, _ in events["GAN"]] == [4, 8]
    for (_, (height, width, pixels)), epoch in zip(events["GAN"], (1, 2)):
        on_disk = np.asarray(Image.open(workdir / f"GAN_epoch{epoch:03d}.png"))
        assert pixels.shape[:2] == (height, width) and np.array_equal(pixels, on_disk)


def test_a_resumed_run_shows_each_step_once_in_order(uninterrupted, resumed):
    """The resumed run's curves are the uninterrupted run's."""
    resumed, full = _events(resumed), _events(uninterrupted[0])
    assert sorted(resumed) == sorted(full)
    for tag in ("D_loss", "G_loss"):
        assert resumed[tag] == full[tag]  # bit-identical resume: the same values
    assert [s for s, _ in resumed["epoch_time"]] == [4, 8]
    assert [s for s, _ in resumed["GAN"]] == [4, 8]


def test_the_scalars_epoch_hooks_return_are_shown_and_survive_a_resume(resumed):
    """Epoch 1's scalars come back from the checkpoint's history."""
    events = _events(resumed)
    assert events["probe/epoch"] == [(4, 10.0), (8, 20.0)]
    assert events["probe/step"] == [(4, 4.0), (8, 8.0)]


def test_a_file_named_like_a_grid_that_is_no_picture_does_not_stop_the_run(resumed):
    """A resumed run shows the pictures of earlier epochs from their files: one that does not
    read as a picture is left out."""
    events = _events(resumed)
    assert "GAN_notes" not in events and [s for s, _ in events["GAN"]] == [4, 8]


# ----------------------------------------------------------------------------- --profile-steps

def test_profile_steps_write_a_trace_of_the_calls_holding_those_steps(tiny_images, tmp_path):
    logs = []
    mesh = parallel.make_mesh(jax.devices()[:1])
    loop.train(GANTask(CONFIG), tiny_images, str(tmp_path), mesh, log=logs.append,
               profile_steps=(6, 7))  # epoch 2's program runs steps 5..8
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert any(line.startswith("wrote a profile of steps 5..8, the calls holding steps 6..7 "
                               "(--steps-per-call 1 traces those alone) into ")
               for line in logs), logs


@pytest.mark.parametrize("steps,message", [
    ("5..3", "--profile-steps must be FIRST..LAST with 1 <= FIRST <= LAST, such as 10..20, "
             "got 5..3"),
    ("0..2", "--profile-steps must be FIRST..LAST with 1 <= FIRST <= LAST"),
    ("ten", "--profile-steps must be FIRST..LAST"),
    ("3..9", "--profile-steps 3..9 is outside the run's steps 1..8 (2 epochs of 4)"),
])
def test_profile_steps_outside_the_run_or_reversed_are_refused(steps, message, tmp_path, capsys):
    data_dir = write_idx_dataset(str(tmp_path / "idx"))
    code, _, err = run_in_process("gan_mnist.py", "--data-dir", data_dir, "--epochs", 2,
                                  "--batch-size", 16, "--workdir", tmp_path / "w",
                                  "--profile-steps", steps, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert not (tmp_path / "w").exists()


class _FullDisk:
    """An event file on a disk that has filled up."""

    def write(self, data=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    flush = write

    def close(self):
        pass


def test_a_full_disk_under_tensorboard_is_one_error_not_a_shorter_curve(tmp_path):
    """The curve's and the pictures' records that cannot be written stop the run with one line
    naming the event file, instead of being skipped (a truncated file TensorBoard reports as
    data loss)."""
    from jaxgen.errors import JaxgenError

    board = tensorboard.Board(str(tmp_path), steps_per_epoch=4, log_every=2)
    board.rebuild({"D_loss": [1.0, 0.9, 0.8, 0.7]}, [1.5], [{}], lambda epoch: {})
    grid = np.zeros((8, 8, 1), np.uint8)
    board._file._writer._py_recordio_writer._writer = _FullDisk()
    for write in (lambda: board.step(2, 2, {"D_loss": 0.5}),
                  lambda: board.epoch_end(2, 1.5, {"GAN": grid}, {}),
                  lambda: board._file.flush(), lambda: board.close()):
        with pytest.raises(JaxgenError, match=r"cannot write .*events\.out\.tfevents\..*: no "
                                              r"space left on the device; the run's checkpoints"):
            write()
