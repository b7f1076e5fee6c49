"""The CNN's dense head as named NumPy arrays, and its safe ``.npz`` serialisation.

The head is Dense(hidden, relu) then Dense(1, sigmoid) over an embedding of size D. It
is what devices retrain and the federation exchanges, so every load treats the file as
hostile: no pickle, bounded size, exact names, float dtypes, consistent shapes, finite.
"""
from __future__ import annotations

import io
import logging
import math
import os
import zipfile
import zlib
from typing import BinaryIO, Mapping

import numpy as np

from models.core.files import write_atomic

log = logging.getLogger(__name__)

HEAD_NAMES = ("hidden/kernel", "hidden/bias", "output/kernel", "output/bias")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the paper's head (21632x32) is ~2.8 MB
_FLOAT_KINDS = "f"  # float16/32/64 are converted; ints, bools, objects are refused

Arrays = dict[str, np.ndarray]


class WeightsError(ValueError):
    """Head weights are malformed, unsafe or do not match the expected shapes."""


def head_shapes(embedding_dim: int, hidden: int = 32) -> dict[str, tuple[int, ...]]:
    """Shapes of the head arrays, keyed by :data:`HEAD_NAMES`.

    Parameters
    ----------
    embedding_dim : int
        Size D of the backbone's embedding.
    hidden : int
        Units of the hidden dense layer.
    """
    if embedding_dim < 1 or hidden < 1:
        raise WeightsError(f"head dimensions must be positive, got D={embedding_dim}, "
                           f"hidden={hidden}")
    return {"hidden/kernel": (embedding_dim, hidden), "hidden/bias": (hidden,),
            "output/kernel": (hidden, 1), "output/bias": (1,)}


def _validate(arrays: Mapping[str, np.ndarray],
              expected_shapes: Mapping[str, tuple[int, ...]] | None) -> Arrays:
    names = set(arrays)
    if names != set(HEAD_NAMES):
        missing, extra = sorted(set(HEAD_NAMES) - names), sorted(names - set(HEAD_NAMES))
        raise WeightsError(f"head arrays must be exactly {list(HEAD_NAMES)}; "
                           f"missing {missing}, extra {extra}")
    out: Arrays = {}
    for name in HEAD_NAMES:
        arr = np.asarray(arrays[name])
        if arr.dtype.kind not in _FLOAT_KINDS:
            raise WeightsError(f"{name}: dtype {arr.dtype} refused, expected a float dtype")
        with np.errstate(over="ignore"):  # float64 overflow becomes inf, refused below
            out[name] = np.array(arr, dtype=np.float32, order="C")  # keeps a 0-d shape
    # Even without expected shapes the four arrays must form one valid head.
    kernel = out["hidden/kernel"].shape
    if len(kernel) != 2:
        raise WeightsError(f"hidden/kernel: shape {kernel} is not 2-D")
    if expected_shapes is None:
        expected_shapes = head_shapes(*kernel)
    for name in HEAD_NAMES:
        want = tuple(expected_shapes[name])
        if out[name].shape != want:
            raise WeightsError(f"{name}: shape {out[name].shape}, expected {want}")
        if not np.isfinite(out[name]).all():
            raise WeightsError(f"{name}: contains NaN or Inf")
    return out


def head_to_bytes(arrays: Mapping[str, np.ndarray], compress: bool = False) -> bytes:
    """Serialise a validated head to ``.npz`` bytes (float32, deterministic).

    ``np.savez`` stamps every member with the fixed zip epoch (1980-01-01), so equal
    arrays give equal bytes, and equal SHA-256 in a bundle manifest. ``compress``
    deflates the members (a pruned head's zeros cost nothing).
    """
    checked = _validate(arrays, None)
    return _npz({name: checked[name] for name in HEAD_NAMES}, compress)


def arrays_to_bytes(arrays: Mapping[str, np.ndarray], compress: bool = False) -> bytes:
    """Any named finite float arrays as deterministic ``.npz`` bytes (float32)."""
    out = {}
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        if arr.dtype.kind not in _FLOAT_KINDS or not np.isfinite(arr).all():
            raise WeightsError(f"{name}: needs finite floats, got dtype {arr.dtype}")
        out[name] = np.array(arr, dtype=np.float32, order="C")
    return _npz(out, compress)


def _npz(arrays: Mapping[str, np.ndarray], compress: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def load_arrays(source: str | os.PathLike | bytes | BinaryIO,
                expected_shapes: Mapping[str, tuple[int, ...]],
                max_bytes: int = DEFAULT_MAX_BYTES) -> Arrays:
    """Named float32 arrays from untrusted ``.npz`` data, exactly the names and shapes
    of ``expected_shapes``, finite (WeightsError naming what is wrong otherwise)."""
    arrays = read_npz(_read_source(source, max_bytes), max_bytes)
    if set(arrays) != set(expected_shapes):
        raise WeightsError(f"arrays must be exactly {sorted(expected_shapes)}, got "
                           f"{sorted(arrays)}")
    out: Arrays = {}
    for name, want in expected_shapes.items():
        arr = np.asarray(arrays[name])
        if arr.dtype.kind not in _FLOAT_KINDS:
            raise WeightsError(f"{name}: dtype {arr.dtype} refused, expected a float dtype")
        with np.errstate(over="ignore"):
            out[name] = np.array(arr, dtype=np.float32, order="C")
        if out[name].shape != tuple(want):
            raise WeightsError(f"{name}: shape {out[name].shape}, expected {tuple(want)}")
        if not np.isfinite(out[name]).all():
            raise WeightsError(f"{name}: contains NaN or Inf")
    return out


def save_head(path_or_filelike: str | os.PathLike | BinaryIO,
              arrays: Mapping[str, np.ndarray]) -> None:
    """Write a head to a path (atomically and durably) or to a binary file object."""
    data = head_to_bytes(arrays)
    if hasattr(path_or_filelike, "write"):
        path_or_filelike.write(data)
        return
    write_atomic(path_or_filelike, data, mode=0o644)


def _read_source(source: str | os.PathLike | bytes | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
    else:
        size = os.path.getsize(source)
        if size > max_bytes:
            raise WeightsError(f"head file is {size} bytes, limit is {max_bytes}")
        with open(source, "rb") as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise WeightsError(f"head data exceeds the {max_bytes}-byte limit")
    return data


def load_head(source: str | os.PathLike | bytes | BinaryIO,
              expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Arrays:
    """Load and validate head weights from untrusted ``.npz`` data.

    Parameters
    ----------
    source : path, bytes or binary file object
        The ``.npz`` data.
    expected_shapes : mapping, optional
        Required shape per name (see :func:`head_shapes`); when omitted the shapes need
        only be consistent with each other.
    max_bytes : int
        Limit on both the archive size and its uncompressed size (zip bombs).

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays keyed by :data:`HEAD_NAMES`.

    Raises
    ------
    WeightsError
        With the reason: not an npz, pickled objects, wrong/missing/extra names, bad
        dtype or shape, NaN/Inf, too big.
    """
    return _validate(read_npz(_read_source(source, max_bytes), max_bytes), expected_shapes)


def read_npz(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Arrays:
    """The arrays of untrusted ``.npz`` bytes, by name; WeightsError if it is not a
    plain archive of ``.npy`` members that holds at most ``max_bytes`` once expanded.

    Nothing is pickled (``allow_pickle=False``), and each member's header is checked
    against the member's size before its array is allocated: a header may claim a
    terabyte-sized shape over a few bytes of data.
    """
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise WeightsError("not an .npz (zip) archive")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise WeightsError(f"archive expands to {total} bytes, limit {max_bytes}")
            if any(not info.filename.endswith(".npy") for info in infos):
                raise WeightsError("archive holds a member that is not a .npy array")
            names = [info.filename[:-len(".npy")] for info in infos]
            if len(set(names)) != len(names):
                raise WeightsError("archive holds duplicate array names")
            arrays = {}
            for info, name in zip(infos, names):
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)(fh)
                    if math.prod(shape) * dtype.itemsize > info.file_size:
                        raise WeightsError(f"{name}: header claims shape {shape} of "
                                           f"{dtype}, more than the member holds")
                with zf.open(info) as fh:
                    # allow_pickle=False: object arrays raise instead of unpickling.
                    arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
    except WeightsError:
        raise
    except ValueError as exc:
        raise WeightsError(f"archive refused: {exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error,
            RuntimeError) as exc:  # RuntimeError: a member flagged as encrypted
        raise WeightsError(f"archive is corrupt: {exc}") from exc
    return arrays


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate the head into one float32 vector, in :data:`HEAD_NAMES` order."""
    return np.concatenate([np.asarray(arrays[n], dtype=np.float32).ravel()
                           for n in HEAD_NAMES])


def unflatten(vec: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    """Inverse of :func:`flatten`: split a vector into arrays of the given shapes."""
    vec = np.asarray(vec, dtype=np.float32).ravel()
    sizes = [int(np.prod(shapes[n])) for n in HEAD_NAMES]
    if vec.size != sum(sizes):
        raise WeightsError(f"vector has {vec.size} values, shapes need {sum(sizes)}")
    parts = np.split(vec, np.cumsum(sizes)[:-1])
    return {n: p.reshape(shapes[n]).copy() for n, p in zip(HEAD_NAMES, parts)}


def delta(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Arrays:
    """Element-wise ``a - b`` per array (e.g. new head minus base head, and an adapter's
    too), float32; both must hold the same names."""
    if set(a) != set(b):
        raise WeightsError(f"cannot subtract arrays {sorted(b)} from {sorted(a)}")
    out = {}
    for name in a:
        x, y = np.asarray(a[name], np.float32), np.asarray(b[name], np.float32)
        if x.shape != y.shape:
            raise WeightsError(f"{name}: cannot subtract shape {y.shape} from {x.shape}")
        out[name] = x - y
    return out


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over all arrays (accumulated in float64)."""
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(x, np.float64))))
                             for x in arrays.values())))
