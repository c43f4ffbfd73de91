"""Reading training data (inputs and labels) from a file.

Formats, told apart by their first bytes rather than the file name:

- text (CSV): comma-, tab- or whitespace-separated columns, optionally with a
  header row naming them (a first row with no number in it is a header);
- NumPy .npy: a 2-D array of shape (N, K), columns by index;
- NumPy .npz: 1-D arrays named x and y (or chosen by name).

Columns: x_col/y_col name a header column or a 0-based index. By default the
input is the column named "x", else the first; the label the column named "y",
else the second; a table of more than two columns must name what it lacks.

Sharding: with rank and world_size, only rows [start, stop) of
shard_bounds(N, rank, world_size) are converted and returned, a contiguous
block per rank (e.g. for torchrun). Rows outside the shard are not checked.

Every problem with a file raises DataFileError, a ValueError whose message is
one line naming the file and, where it applies, the row and column.
"""
import csv
import math

import torch

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


class DataFileError(ValueError):
    """A data file is missing, unreadable or holds something other than numbers."""


def shard_bounds(n_rows: int, rank: int, world_size: int) -> tuple:
    """Rows [start, stop) of rank's contiguous block of n_rows split world_size
    ways: block sizes differ by at most one, the larger ones first (as
    torch.tensor_split does)."""
    for name, value in (("n_rows", n_rows), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size or n_rows < 0:
        raise ValueError(f"need n_rows >= 0 and 0 <= rank < world_size, got "
                         f"n_rows={n_rows}, rank={rank}, world_size={world_size}")
    size, extra = divmod(n_rows, world_size)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def load_xy(path, x_col=None, y_col=None, *, dtype=torch.float32, rank=None,
            world_size=None):
    """(inputs, labels): two 1-D float tensors of the same length from `path`."""
    table = _read(path)
    xi = _column(table, x_col, "x", 0)
    yi = _column(table, y_col, "y", 1)
    # Transposed first so that each returned tensor is contiguous.
    return tuple(_values(table, [xi, yi], dtype, rank, world_size).T.contiguous())


def load_x(path, x_col=None, *, dtype=torch.float32, rank=None, world_size=None):
    """The inputs alone (for prediction): one 1-D float tensor from `path`."""
    table = _read(path)
    xi = _column(table, x_col, "x", 0)
    return _values(table, [xi], dtype, rank, world_size)[:, 0]


class _Table:
    """A file's columns before conversion: `rows(start, stop)` yields
    (where, fields) with `where` saying where the row is in the file."""

    def __init__(self, path, names, n_rows, rows):
        self.path, self.names, self.n_rows, self.rows = path, names, n_rows, rows


def _read(path) -> _Table:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataFileError(f"cannot read {path}: {e.strerror}") from None
    if head == _NPY_MAGIC:
        return _read_npy(path)
    if head.startswith(_ZIP_MAGIC):
        return _read_npz(path)
    return _read_text(path)


def _read_text(path) -> _Table:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise DataFileError(f"{path} is not a UTF-8 text, .npy or .npz file") from None
    except OSError as e:
        raise DataFileError(f"cannot read {path}: {e.strerror}") from None
    # (line number, fields) of every non-blank line.
    records = [(n, _split(line)) for n, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise DataFileError(f"{path} is empty: no rows of data")
    names = None
    first = records[0][1]
    if not any(_is_number(field) for field in first):
        names = [field.strip() for field in first]
        records = records[1:]
    width = len(first)

    def rows(start, stop):
        for i in range(start, stop):
            line, fields = records[i]
            where = f"row {i + 1} (line {line})"
            if len(fields) != width:
                raise DataFileError(f"{path} {where} has {len(fields)} fields, "
                                    f"expected {width}")
            yield where, fields

    return _Table(path, names or list(range(width)), len(records), rows)


def _split(line):
    if "," in line:
        return next(csv.reader([line]))
    if "\t" in line:
        return line.split("\t")
    return line.split()


def _is_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numpy(path):
    try:
        import numpy
    except ImportError:
        raise DataFileError(f"{path} is a NumPy file; reading it needs numpy "
                            f"(pip install numpy)") from None
    return numpy


def _read_npy(path) -> _Table:
    np = _numpy(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read {path} as .npy: {e}") from None
    if array.ndim != 2:
        raise DataFileError(f"{path} holds an array of shape {array.shape}; "
                            f"expected (N, 2): one row per point")
    _check_numeric(path, array.dtype, np)

    def rows(start, stop):
        for i in range(start, stop):
            yield f"row {i + 1}", array[i]

    return _Table(path, list(range(array.shape[1])), array.shape[0], rows)


def _read_npz(path) -> _Table:
    np = _numpy(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read {path} as .npz: {e}") from None
    lengths = {}
    for name, array in arrays.items():
        if array.ndim != 1:
            raise DataFileError(f"{path}: array {name} has shape {array.shape}; "
                                f"expected a 1-D array of values")
        _check_numeric(path, array.dtype, np)
        lengths[name] = len(array)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise DataFileError(f"{path}: arrays of different lengths ({sizes})")
    names = list(arrays)
    columns = [arrays[name] for name in names]

    def rows(start, stop):
        for i in range(start, stop):
            yield f"row {i + 1}", [column[i] for column in columns]

    return _Table(path, names, next(iter(lengths.values()), 0), rows)


def _check_numeric(path, dtype, np):
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise DataFileError(f"{path} holds {dtype} values; expected numbers")


def _column(table, col, role, default_index) -> int:
    names = table.names
    shown = ", ".join(str(name) for name in names)
    if col is None:
        if role in names:
            return names.index(role)
        if len(names) <= 2 and default_index < len(names):
            return default_index
        raise DataFileError(f"{table.path} has {len(names)} column(s) ({shown}); "
                            f"choose the {role} column with {role}_col")
    if col in names:
        return names.index(col)
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
        if 0 <= int(col) < len(names):
            return int(col)
    raise DataFileError(f"{role}_col {col!r} is not a column of {table.path} "
                        f"(columns: {shown}; or a 0-based index)")


def _values(table, cols, dtype, rank, world_size) -> torch.Tensor:
    """The chosen columns of the shard's rows as an (n, len(cols)) tensor."""
    if table.n_rows == 0:
        raise DataFileError(f"{table.path} is empty: no rows of data")
    start, stop = 0, table.n_rows
    if rank is not None or world_size is not None:
        start, stop = shard_bounds(table.n_rows, rank, world_size)
    limit = torch.finfo(dtype).max
    out = []
    for where, fields in table.rows(start, stop):
        row = []
        for c in cols:
            value = _number(table, where, c, fields[c])
            if not math.isfinite(value) or abs(value) > limit:
                raise DataFileError(
                    f"{table.path} {where}, column {table.names[c]}: {value} is not "
                    f"a finite {str(dtype).removeprefix('torch.')} number")
            row.append(value)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(-1, len(cols)).to(dtype)


def _number(table, where, c, field) -> float:
    try:
        return float(field)
    except ValueError:
        raise DataFileError(f"{table.path} {where}, column {table.names[c]}: "
                            f"{str(field).strip()!r} is not a number") from None
