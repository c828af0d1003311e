"""Read a TensorFlow (v1/v2 tensor-bundle) checkpoint without TensorFlow.

MusiCNN ships its weights as a TF checkpoint: ``<prefix>.index`` (a LevelDB-style sorted table
of tensor name -> BundleEntryProto) and ``<prefix>.data-00000-of-00001`` (the raw tensors).
TensorFlow is a 1.9 GB install for reading ~2 M float32 numbers, so we read the format directly:
table footer -> index block -> data blocks -> entries (uncompressed, as TF writes bundles), then
each entry's dtype, shape, offset and size from the protobuf wire format.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type + crc32c after every block
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}  # TF DataType enum values we meet


class CheckpointError(ValueError):
    """The checkpoint files are missing or not a tensor bundle we can read."""


def read_checkpoint(prefix) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at ``prefix`` (the path without ``.index``), by name."""
    prefix = str(prefix)
    index_path, data_path = Path(prefix + ".index"), Path(prefix + ".data-00000-of-00001")
    for path in (index_path, data_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file missing; reinstall the package that ships it")
    data = data_path.read_bytes()
    tensors = {}
    for name, value in _table_entries(index_path.read_bytes(), index_path):
        if not name:  # the empty key holds the bundle header, not a tensor
            continue
        dtype_code, shape, offset, size, shard = _bundle_entry(value)
        if shard != 0 or dtype_code not in _DTYPES:
            raise CheckpointError(f"{index_path}: tensor {name!r} is sharded or of an unsupported type")
        dtype = np.dtype(_DTYPES[dtype_code]).newbyteorder("<")
        if size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or offset + size > len(data):
            raise CheckpointError(f"{data_path}: tensor {name!r} does not fit its recorded shape; the file is damaged")
        tensors[name] = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape).copy()
    return tensors


def _table_entries(table: bytes, path: Path):
    """(key, value) pairs of a LevelDB-format table, in key order."""
    if len(table) < _FOOTER_BYTES or struct.unpack("<Q", table[-8:])[0] != _TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a checkpoint index (bad table footer)")
    footer = table[-_FOOTER_BYTES:]
    position = 0
    _, position = _varint(footer, position)  # metaindex handle: unused
    _, position = _varint(footer, position)
    index_offset, position = _varint(footer, position)
    index_size, position = _varint(footer, position)
    for _, handle in _block_entries(table, index_offset, index_size, path):
        block_offset, position = _varint(handle, 0)
        block_size, _ = _varint(handle, position)
        yield from _block_entries(table, block_offset, block_size, path)


def _block_entries(table: bytes, offset: int, size: int, path: Path):
    """Entries of one block: keys are prefix-compressed against the previous key."""
    if table[offset + size] != 0:  # compression byte of the trailer: TF writes bundles uncompressed
        raise CheckpointError(f"{path}: compressed checkpoint blocks are not supported")
    block = table[offset : offset + size]
    restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 - 4 * restarts
    position, key = 0, b""
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        yield key.decode("utf-8"), block[position : position + value_length]
        position += value_length


def _bundle_entry(message: bytes) -> tuple[int, tuple[int, ...], int, int, int]:
    """dtype, shape, offset, size and shard id from a serialized BundleEntryProto."""
    fields = _fields(message)
    shape = ()
    if 2 in fields:
        shape_fields = _fields(fields[2][0])
        shape = tuple(_fields(dim).get(1, [0])[0] for dim in shape_fields.get(2, []))
    first = lambda number: fields.get(number, [0])[0]  # noqa: E731 - proto3 default is 0
    return first(1), shape, first(4), first(5), first(3)


def _fields(message: bytes) -> dict[int, list]:
    """Field number -> values (varints as ints, length-delimited as bytes) of a protobuf message."""
    fields: dict[int, list] = {}
    position = 0
    while position < len(message):
        tag, position = _varint(message, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(message, position)
        elif wire_type == 2:
            length, position = _varint(message, position)
            value, position = message[position : position + length], position + length
        elif wire_type == 5:
            value, position = struct.unpack("<I", message[position : position + 4])[0], position + 4
        elif wire_type == 1:
            value, position = struct.unpack("<Q", message[position : position + 8])[0], position + 8
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire_type} in a checkpoint entry")
        fields.setdefault(number, []).append(value)
    return fields


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
