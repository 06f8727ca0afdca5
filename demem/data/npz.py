"""Reading `.npz` archives that users hand us, without trusting them.

`np.load` alone would read whatever a member's header claims (a 4-byte member can claim terabytes)
and, with pickles allowed, run code. Here every member's `.npy` header is read and checked first
(dtype, shape, and that the zip directory's uncompressed size is exactly header + shape * itemsize),
against the caller's limits, before any array data is read; arrays are then read with
``allow_pickle=False`` from the same open archive. Every failure is a `DataFileError` naming the file
(and the member).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demem.data.sources import DataFileError

# The longest .npy header read (numpy's own default bound): a crafted header cannot make us parse more.
MAX_HEADER_BYTES = 10_000

# What reading a member can raise for a truncated, corrupt or crafted archive.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)


@dataclass(frozen=True)
class Member:
    """One `.npy` array in an archive, as its header describes it.

    Attributes:
        key: the array's name (the member name without ``.npy``).
        shape, dtype: from the header.
        fortran: whether the data are stored in Fortran (column-major) order.
        offset: bytes of the header, before the data.
        size: uncompressed bytes of the member, from the zip directory.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int
    size: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataFileError(
            f"{path}: not a readable .npz file (a zip archive of .npy arrays; truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from None


def read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the `.npy` array whose bytes `f` (a binary file) starts at,
    from its header alone (at most MAX_HEADER_BYTES of it); `f` is left at the array's data.

    Raises:
        ValueError, EOFError: not a `.npy` header (or one of an unknown version).
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    key = info.filename[: -len(".npy")]
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except _READ_ERRORS as e:
        raise DataFileError(f"{path}: member {info.filename!r} is not a readable .npy array: {e}") from None
    if dtype.hasobject:
        raise DataFileError(
            f"{path}: member {info.filename!r} holds Python objects (dtype {dtype}), which only a pickle can "
            "carry; refused (save plain numeric arrays)"
        )
    member = Member(key, shape, dtype, fortran, offset, info.file_size)
    if member.offset + member.nbytes != member.size:
        raise DataFileError(
            f"{path}: member {info.filename!r}: its header says {member.shape} {dtype} = {member.nbytes} bytes of "
            f"data, but the archive holds {member.size - member.offset} (truncated or crafted)"
        )
    return member


def members(path: Path, allowed: set[str] | None = None, max_bytes: int = 1 << 34) -> dict[str, Member]:
    """The arrays in `path`, from their headers alone (no array data is read).

    Args:
        path: the .npz file.
        allowed: the only keys accepted (None: any).
        max_bytes: the largest uncompressed total accepted.

    Raises:
        DataFileError: naming `path` for a file that is not an npz of plain arrays, a member whose size
            disagrees with its header, keys outside `allowed`, or more than `max_bytes` in all.
    """
    with _open_zip(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        odd = [n for n in names if not n.endswith(".npy")]
        if odd:
            raise DataFileError(f"{path}: members {odd[:10]} are not .npy arrays; an .npz holds only .npy members")
        keys = [n[: -len(".npy")] for n in names]
        if len(set(keys)) != len(keys):
            raise DataFileError(f"{path}: an array name appears twice in the archive (crafted?)")
        if allowed is not None and not set(keys) <= allowed:
            raise DataFileError(
                f"{path}: unknown arrays {sorted(set(keys) - allowed)[:10]}; allowed: {', '.join(sorted(allowed))}"
            )
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise DataFileError(f"{path}: {total} bytes uncompressed, more than the {max_bytes} accepted")
        return {m.key: m for m in (_header(path, zf, i) for i in infos)}


def read(path: Path, member: Member) -> np.ndarray:
    """The whole array `member` of `path` (checked by `members`), read without pickles."""
    with _open_zip(path) as zf:
        try:
            with zf.open(f"{member.key}.npy") as f:
                array = np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER_BYTES)
        except (*_READ_ERRORS, KeyError) as e:
            raise DataFileError(
                f"{path}: member '{member.key}.npy' cannot be read (truncated or corrupt?): {e}"
            ) from None
    if array.shape != member.shape or array.dtype != member.dtype:
        raise DataFileError(f"{path}: member '{member.key}.npy' changed while it was read")
    return array


def chunks(path: Path, member: Member, max_chunk_bytes: int = 1 << 25) -> Iterator[np.ndarray]:
    """The C-ordered array `member` of `path` in whole rows along axis 0, at most `max_chunk_bytes`
    each (so statistics of a large array need not hold it in memory)."""
    if member.fortran:
        raise ValueError("chunks: Fortran-ordered arrays cannot be read in rows")
    row_shape = member.shape[1:]
    row_bytes = max(1, math.prod(row_shape) * member.dtype.itemsize)
    per_chunk = max(1, max_chunk_bytes // row_bytes)
    with _open_zip(path) as zf:
        try:
            with zf.open(f"{member.key}.npy") as f:
                f.seek(member.offset)
                left = member.shape[0] if member.shape else 0
                while left > 0:
                    n = min(per_chunk, left)
                    data = f.read(n * row_bytes)
                    if len(data) != n * row_bytes:
                        raise EOFError(f"expected {n * row_bytes} bytes, got {len(data)}")
                    yield np.frombuffer(data, dtype=member.dtype).reshape((n, *row_shape))
                    left -= n
        except (*_READ_ERRORS, KeyError) as e:
            raise DataFileError(
                f"{path}: member '{member.key}.npy' cannot be read (truncated or corrupt?): {e}"
            ) from None
