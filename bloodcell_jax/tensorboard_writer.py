"""TensorBoard event files written directly: scalars and PNG images, no TensorFlow or protobuf.

An event file is a sequence of records (length, masked CRC-32C of the length, a serialized `Event`
protocol buffer, masked CRC-32C of it). The few message fields we need are encoded by hand below,
following tensorflow/core/util/event.proto and summary.proto, so `tensorboard --logdir checkpoints/`
shows the curves without pulling TensorFlow into the training environment.
"""

import os
import socket
import struct
import time

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # negative int64 values use ten bytes, as protobuf does
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def _event(wall_time: float, step: int, *, file_version: str | None = None, summary: bytes | None = None) -> bytes:
  out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if summary is not None:
    out += _length_delimited(5, summary)
  return out


def scalar_value(tag: str, value: float) -> bytes:
  """A `Summary.Value` with `simple_value`."""
  return _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(value))))


def image_value(tag: str, png: bytes, height: int, width: int, channels: int = 3) -> bytes:
  """A `Summary.Value` holding an encoded PNG (`Summary.Image`)."""
  image = (_field(1, 0, _varint(height)) + _field(2, 0, _varint(width)) + _field(3, 0, _varint(channels))
           + _length_delimited(4, png))
  return _length_delimited(1, _length_delimited(1, tag.encode()) + _length_delimited(4, image))


def record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
  """Appends events to a new `events.out.tfevents.*` file in `logdir` (one file per writer).

  Each `write_*` call is flushed at once: an epoch's few records are cheap, and a killed run
  keeps every curve point it logged.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._append(_event(time.time(), 0, file_version="brain.Event:2"))

  def _append(self, event: bytes) -> None:
    self._file.write(record(event))
    self._file.flush()

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    values = b"".join(scalar_value(tag, value) for tag, value in scalars.items())
    self._append(_event(time.time(), step, summary=values))

  def write_png(self, step: int, tag: str, png: bytes, height: int, width: int) -> None:
    self._append(_event(time.time(), step, summary=image_value(tag, png, height, width)))

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "EventWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
