"""TensorBoard event files of a run, in ``WORKDIR/tensorboard/``, written without TensorFlow.

    tensorboard --logdir checkpoints/        # every run under it, while it trains

What a run shows is derived from what its workdir holds: the logged metrics of every logged step
(``D_loss``, ``G_loss``, ... at the global step), after every epoch its time (``epoch_time``),
its pictures (each ``<TASK>[_what]_epochNNN.png`` the task drew, as an image tagged
``<TASK>[_what]``) and its scores when it was evaluated (``eval/fid``, ...,
``eval_floor/fid``, ..., from ``eval_history.jsonl``). The training loop writes them as it goes
(:class:`Board`); when a run starts or resumes, the event files are written anew from the
checkpoint's history first, so a resumed run shows each step once and in order, whatever a
killed run had written.

The files are TFRecord files of ``Event`` protocol buffers (TensorBoard's format), encoded
here by hand: a handful of fields, so TensorFlow need not be imported by training.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import struct
import time
from typing import Optional

from jaxgen.workdir import unwritable

DIRECTORY = "tensorboard"
EVAL_HISTORY = "eval_history.jsonl"  # as jaxgen.runs.evaluate writes it (a higher layer)


# ----------------------------------------------------------------------------- the format

def _crc32c_table() -> list:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files checksum their records."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _event(step: int, summary: Optional[bytes] = None,
           file_version: Optional[str] = None) -> bytes:
    """An ``Event``: wall_time (1), step (2), file_version (3) or summary (5)."""
    out = _key(1, 1) + struct.pack("<d", time.time()) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary is not None:
        out += _bytes_field(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value``: tag (1), simple_value (2, float)."""
    return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
    """A ``Summary.Value`` with an ``Image``: height (1), width (2), colorspace (3), the PNG
    bytes (4)."""
    image = (_key(1, 0) + _varint(height) + _key(2, 0) + _varint(width)
             + _key(3, 0) + _varint(channels) + _bytes_field(4, png))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, image)


class EventWriter:
    """One event file of TensorBoard's in ``directory``."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.jaxgen"
        self.path = os.path.join(directory, name)
        try:
            self._file = open(self.path, "ab")
        except OSError as e:
            raise unwritable(self.path, e, "the run's checkpoints are intact") from None
        self._write(_record(_event(0, file_version="brain.Event:2")))

    def _write(self, record: bytes) -> None:
        """Appends ``record``; a full disk or a read-only directory is one clear error, never a
        curve silently cut short."""
        try:
            self._file.write(record)
        except OSError as e:
            raise unwritable(self.path, e, "the run's checkpoints are intact") from None

    def scalars(self, step: int, values: dict) -> None:
        summary = b"".join(_bytes_field(1, _scalar_value(tag, float(v)))
                           for tag, v in values.items())
        self._write(_record(_event(step, summary)))

    def image(self, step: int, tag: str, png_path: str) -> None:
        """The PNG file ``png_path`` as an image; an OSError (PIL's UnidentifiedImageError is
        one) when it cannot be read as a picture, with nothing written."""
        from PIL import Image  # the pictures' own library; loaded when there is one

        with open(png_path, "rb") as f:
            png = f.read()
        with Image.open(png_path) as picture:
            width, height = picture.size
            channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(picture.mode, 3)
        summary = _bytes_field(1, _image_value(tag, png, height, width, channels))
        self._write(_record(_event(step, summary)))

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as e:
            raise unwritable(self.path, e, "the run's checkpoints are intact") from None

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- a run's board

class Board:
    """What the training loop writes to TensorBoard for the run in ``workdir`` (process 0)."""

    def __init__(self, workdir: str, name: str, steps_per_epoch: int, log_every: int):
        self.workdir, self.name = workdir, name
        self.steps_per_epoch, self.log_every = steps_per_epoch, log_every
        self.directory = os.path.join(workdir, DIRECTORY)
        self._writer: Optional[EventWriter] = None

    def rebuild(self, metrics: dict, epoch_times: list) -> None:
        """Event files written anew from a checkpoint's history (per-step ``metrics``, one list
        per name, and the per-epoch times): whatever the directory held is replaced."""
        for stale in glob.glob(os.path.join(self.directory, "events.out.tfevents.*")):
            os.remove(stale)
        self._writer = EventWriter(self.directory)
        for epoch, seconds in enumerate(epoch_times, start=1):
            offset = (epoch - 1) * self.steps_per_epoch
            for i in range(self.log_every, self.steps_per_epoch + 1, self.log_every):
                self.step(epoch, i, {k: v[offset + i - 1] for k, v in metrics.items()})
            self.epoch_end(epoch, seconds)

    def step(self, epoch: int, step: int, values: dict) -> None:
        """The metrics logged at ``step`` (1-based) of ``epoch``."""
        self._writer.scalars((epoch - 1) * self.steps_per_epoch + step, values)

    def epoch_end(self, epoch: int, seconds: float) -> None:
        """After ``epoch``: its time, the pictures the task drew, the scores if evaluated."""
        step = epoch * self.steps_per_epoch
        self._writer.scalars(step, {"epoch_time": seconds})
        suffix = f"_epoch{epoch:03d}.png"
        for path in sorted(glob.glob(os.path.join(self.workdir, f"{self.name}*{suffix}"))):
            try:
                self._writer.image(step, os.path.basename(path)[:-len(suffix)], path)
            except (OSError, ValueError):  # not a picture after all: TensorBoard goes without
                continue
        row = self._eval_row(epoch)
        if row is not None:
            self._writer.scalars(step, {f"eval/{k}": v for k, v in row.items()
                                        if _is_number(v)})
            self._writer.scalars(step, {f"eval_floor/{k}": v
                                        for k, v in row.get("floor", {}).items()
                                        if _is_number(v)})
        self._writer.flush()

    def _eval_row(self, epoch: int) -> Optional[dict]:
        path = os.path.join(self.workdir, EVAL_HISTORY)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        matching = [r for r in rows if r.get("epoch") == epoch]
        return {k: v for k, v in matching[-1].items() if k != "epoch"} if matching else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
