"""Reader for IDX files, the format of the (Fashion-)MNIST distribution files.

An IDX file is a 4-byte magic number followed by the dimensions and the data:

* bytes 0-1: zero;
* byte 2: the element type (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
  ``0x0D`` float32, ``0x0E`` float64);
* byte 3: the number of dimensions ``ndim``;
* ``ndim`` big-endian unsigned 32-bit integers, the size of each dimension;
* the elements, big-endian, in C order.

Files may be gzip-compressed (detected from the content, not the name). Every problem with a
file (missing, unreadable, corrupt gzip, bad header, payload of the wrong size) raises
:class:`DataFileError`, whose message names the file and says how to get the data.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "DataFileError", "read_idx", "how_to_get_data"]

#: IDX element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"

_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def how_to_get_data() -> str:
    """Return the sentence, used in error messages, that says how to get Fashion-MNIST.

    Returns
    -------
    str
        Instructions naming the Debian package and the ``data-dir`` alternative.
    """
    return (
        "To get Fashion-MNIST, install Debian's dataset-fashion-mnist package: "
        "apt-get install -y dataset-fashion-mnist (it puts the files in "
        "/usr/share/datasets/fashion-mnist), or set data-dir to a folder with the four IDX "
        f"files ({', '.join(_FASHION_MNIST_FILES)}; uncompressed copies without .gz also work)."
    )


class DataFileError(OSError):
    """A data file is missing, unreadable or malformed.

    The message names the file and says how to get the data.

    Parameters
    ----------
    path
        The offending file (or folder).
    problem
        What is wrong with it, e.g. ``"file not found"``.

    Attributes
    ----------
    path : str
        The offending file (or folder).
    problem : str
        What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{problem}: {self.path}. {how_to_get_data()}")

    def __str__(self) -> str:  # OSError's own __str__ would format (errno, strerror)
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[DataFileError], tuple[str, str]]:
        # Keep the exception picklable (it may cross process boundaries in simulations).
        return (type(self), (self.path, self.problem))


def _read_bytes(path: Path) -> bytes:
    """Read a file's content, decompressing it if it is gzipped."""
    try:
        with path.open("rb") as handle:
            raw = handle.read()
    except FileNotFoundError as exc:
        raise DataFileError(path, "IDX file not found") from exc
    except OSError as exc:
        raise DataFileError(path, f"cannot read IDX file ({exc.strerror or exc})") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFileError(path, f"corrupt or truncated gzip data ({exc})") from exc
    if path.suffix == ".gz":
        raise DataFileError(path, "file name ends in .gz but the content is not gzip data")
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed.

    Parameters
    ----------
    path
        The file to read. Compression is detected from the content; a ``.gz`` name whose
        content is not gzip data is an error.

    Returns
    -------
    numpy.ndarray
        A new, writable array in native byte order, with the dtype given by the file's type
        code (see :data:`IDX_DTYPES`) and the shape given by its dimensions.

    Raises
    ------
    DataFileError
        If the file is missing or unreadable, the gzip stream is corrupt or truncated, the
        magic number is invalid (nonzero leading bytes, unknown type code, zero dimensions),
        the header is truncated, or the payload is shorter or longer than the dimensions say.
    """
    file = Path(path)
    data = _read_bytes(file)
    if len(data) < 4:
        raise DataFileError(file, f"truncated IDX header ({len(data)} bytes, need at least 4)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataFileError(
            file, f"bad IDX magic number 0x{data[:4].hex()} (the first two bytes must be zero)"
        )
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataFileError(
            file, f"unknown IDX element type code 0x{code:02X} (valid codes: {valid})"
        )
    if ndim == 0:
        raise DataFileError(file, "IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataFileError(
            file,
            f"truncated IDX header: {ndim} dimensions need {header_size} bytes, "
            f"file has {len(data)}",
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        kind = "truncated" if actual < expected else "oversized"
        raise DataFileError(
            file,
            f"{kind} IDX payload: shape {tuple(shape)} of {dtype.name} needs {expected} bytes "
            f"after the header, file has {actual}",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # astype copies: the result is writable, native-endian and independent of ``data``.
    return array.astype(dtype.newbyteorder("="), copy=True)
