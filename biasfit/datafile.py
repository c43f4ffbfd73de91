"""Reading training data (inputs and labels) from a file.

Formats, told apart by their first bytes rather than the file name:

- text (CSV): columns separated by ',', ';', '|', tab (the one csv.Sniffer
  finds in the first lines) or else whitespace, optionally with a header row
  naming them (a first row with no number in it is a header), in UTF-8 with
  or without a byte order mark (Excel's "CSV UTF-8");
- NumPy .npy: a 2-D array of shape (N, K), columns by index, memory-mapped;
- NumPy .npz: 1-D arrays named x and y (or chosen by name);
- Parquet (pyarrow): numeric columns, by name or index;
- any of these compressed by gzip, bzip2 or xz (decompressed to a temporary
  file first).
The path "-" reads standard input (spooled to a temporary file).

Columns: x_col/y_col name a header column or a 0-based index. By default the
input is the column named "x", else the first; the label the column named "y",
else the second; a table of more than two columns must name what it lacks.
An .npz has no order that means anything, so its arrays are taken by name:
x and y, or what x_col/y_col name.

Text is parsed by NumPy's C reader (np.loadtxt); when it refuses a file, a
line-by-line pass finds the row and column at fault (or reads the file when
only an unused column holds text).

Sharding: with rank and world_size, only rows [start, stop) of
shard_bounds(N, rank, world_size) are converted and returned, a contiguous
block per rank (e.g. for torchrun). Rows outside the shard are not checked.

Every problem with a file raises DataFileError, a ValueError whose message is
one line naming the file and, where it applies, the row and column.
"""
import bz2
import contextlib
import csv
import gzip
import lzma
import math
import shutil
import sys
import tempfile
import warnings
import zipfile
from array import array

import numpy as np
import torch

_NPY_MAGIC = b"\x93NUMPY"
_PARQUET_MAGIC = b"PAR1"
# Compressed files, by their first bytes: the module that opens each.
_COMPRESSED = ((b"\x1f\x8b", gzip, "gzip"), (b"BZh", bz2, "bzip2"),
               (b"\xfd7zXZ\x00", lzma, "xz"))
_SNIFF_LINES = 20  # lines csv.Sniffer looks at for the delimiter
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_SNIFF = 1 << 16  # bytes looked at to tell the format
_MAX_LINE = 1 << 20  # a "line" longer than this is no table


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
            world_size=None, with_names=False, options=("x_col", "y_col")):
    """(inputs, labels): two 1-D float tensors of the same length from `path`;
    with_names, also the two columns' names (header names, array names or
    "column 0"-style for a table without a header). `options`: how messages
    name x_col and y_col (the CLI's --x-col and --y-col)."""
    (x, y), names = _load(path, [(x_col, "x", 0, options[0]), (y_col, "y", 1, options[1])],
                          dtype, rank, world_size)
    return (x, y, names) if with_names else (x, y)


def load_x(path, x_col=None, *, dtype=torch.float32, rank=None, world_size=None,
           option="x_col"):
    """The inputs alone (for prediction): one 1-D float tensor from `path`."""
    return _load(path, [(x_col, "x", 0, option)], dtype, rank, world_size)[0][0]


def load_table(path, x_col=None, *, dtype=torch.float32, option="x_col"):
    """(inputs, names, columns) for prediction: the inputs as load_x reads
    them, and every column of the file as text as it was read (a text file's
    fields, stripped; other formats' values as NumPy prints them), with its
    name (the header's, or "column 0"-style)."""
    (x,), _, (names, columns) = _load(path, [(x_col, "x", 0, option)], dtype, None, None,
                                      raw=True)
    return x, names, columns


def _load(path, wanted, dtype, rank, world_size, raw=False):
    sharded = rank is not None or world_size is not None
    if sharded:
        shard_bounds(0, rank, world_size)  # refuse a bad rank before any reading
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    with _local_file(path) as (name, given), _decompressed(name, given) as (local, head):
        reader = _reader(name, head)
        shard = (rank, world_size) if sharded else None
        # A value past float32's range casts to inf, which the readers find
        # and name: NumPy's RuntimeWarning would only add lines before that.
        with np.errstate(over="ignore", invalid="ignore"):
            columns, names = reader(name, local, wanted, np_dtype, shard)
        table = _RAW[reader](local, len(columns[0])) if raw else None
    names = [n if isinstance(n, str) else f"column {n}" for n in names]
    tensors = [torch.from_numpy(c) for c in columns]
    return (tensors, names, table) if raw else (tensors, names)


def _reader(name, head):
    """The reader of a file that starts with `head`."""
    if head.startswith(_NPY_MAGIC):
        return _load_npy
    if head.startswith(_ZIP_MAGICS):
        return _load_npz
    if head.startswith(_PARQUET_MAGIC):
        return _load_parquet
    if b"\0" in head:  # binary (or /dev/zero): never read it as lines
        raise DataFileError(f"{name} is not a UTF-8 text, .npy, .npz or Parquet file "
                            f"(or one of them compressed by gzip, bzip2 or xz)")
    return _load_text


def _head(name, path):
    try:
        with open(path, "rb") as f:
            return f.read(_SNIFF)
    except OSError as e:
        raise DataFileError(f"cannot read {name}: {e.strerror}") from None


@contextlib.contextmanager
def _decompressed(name, path):
    """(a path to read, its first bytes): a compressed file decompressed to a
    temporary file, anything else as it is."""
    head = _head(name, path)
    kind = next((k for k in _COMPRESSED if head.startswith(k[0])), None)
    if kind is None:
        yield path, head
        return
    _, module, what = kind
    with tempfile.NamedTemporaryFile(prefix="biasfit-data-") as tmp:
        try:
            with module.open(path, "rb") as f:
                shutil.copyfileobj(f, tmp, 1 << 20)
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise DataFileError(f"cannot read {name} as {what}: {_clean(e)}") from None
        tmp.flush()
        yield tmp.name, _head(name, tmp.name)


@contextlib.contextmanager
def _local_file(path):
    """(name for messages, a path to read): "-" is standard input, copied to
    a temporary file in blocks so that it can be sniffed and re-read."""
    if str(path) != "-":
        yield str(path), path
        return
    with tempfile.NamedTemporaryFile(prefix="biasfit-stdin-") as tmp:
        shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
        tmp.flush()
        yield "stdin", tmp.name


def _bounds(n_rows, shard):
    return (0, n_rows) if shard is None else shard_bounds(n_rows, *shard)


def _clean(text) -> str:
    """One printable line, whatever a library's message held."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# -- text ---------------------------------------------------------------------

def _load_text(name, path, wanted, np_dtype, shard):
    try:
        with open(path, encoding="utf-8-sig") as f:
            before, first = _first_row(name, f)
    except UnicodeDecodeError:
        raise DataFileError(f"{name} is not a UTF-8 text, .npy or .npz file") from None
    if first is None:
        raise DataFileError(f"{name} is empty: no rows of data")
    delimiter = _delimiter(path, first)
    fields = _split(first, delimiter)
    header = not any(_is_number(field) for field in fields)
    names = [field.strip() for field in fields] if header else list(range(len(fields)))
    cols = _columns(name, names, wanted)
    skip = before + header  # lines before the first data row
    table = None
    try:
        if shard is None and delimiter is not None:
            # Each column once: x and y may name the same one, which
            # pyarrow's reader refuses to include twice.
            distinct = list(dict.fromkeys(cols))
            columns = _read_arrow(path, np_dtype, delimiter, skip, len(names), distinct)
            if columns is not None:
                read = dict(zip(distinct, columns))
                return [read[c] for c in cols], [names[c] for c in cols]
        if shard is None:
            table = _loadtxt(path, np_dtype, delimiter, skip, None)
        else:
            lines = _data_lines(path, skip)
            n_rows = sum(1 for _ in lines)
            start, stop = shard_bounds(n_rows, *shard)
            if start == stop:
                return [np.empty(0, np_dtype) for _ in cols], [names[c] for c in cols]
            at = next(x for i, x in enumerate(_data_lines(path, skip)) if i == start)
            table = _loadtxt(path, np_dtype, delimiter, at, stop - start)
        if table.shape[0] == 0 and shard is None:
            raise DataFileError(f"{name} is empty: no rows of data")
        if table.shape[1] == len(names) and np.isfinite(table[:, cols]).all():
            return [np.ascontiguousarray(table[:, c]) for c in cols], [names[c] for c in cols]
    except DataFileError:
        raise
    except (ValueError, UnicodeDecodeError):
        pass
    table = None  # its memory is free for the slow pass
    # NumPy refused the file, or it holds inf/NaN: find the row at fault.
    return (_read_rows(name, path, skip, names, cols, np_dtype, shard, delimiter),
            [names[c] for c in cols])


def _delimiter(path, first):
    """The column separator csv.Sniffer finds in the first lines (',', ';',
    '|' or tab), or None: whitespace."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [line for line in (f.readline(_MAX_LINE) for _ in range(4 * _SNIFF_LINES))
                 if line.strip()][:_SNIFF_LINES]
    try:
        return csv.Sniffer().sniff("".join(lines) or first, delimiters=",;|\t").delimiter
    except csv.Error:
        # One line, or one column: the first line's own separator, if any.
        return next((d for d in ",;|\t" if d in first), None)


def _first_row(name, f):
    """(number of lines before it, text) of the first non-blank line."""
    for before in range(_MAX_LINE):
        line = f.readline(_MAX_LINE)
        if not line:
            return before, None
        if len(line) == _MAX_LINE and not line.endswith("\n"):
            raise DataFileError(f"{name} line {before + 1} is longer than {_MAX_LINE} "
                                f"characters: not a table of numbers")
        if line.strip():
            return before, line.rstrip("\r\n")
    raise DataFileError(f"{name} starts with {_MAX_LINE} blank lines: no rows of data")


def _data_lines(path, skip):
    """The 0-based line index of every non-blank line after the first `skip`."""
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i >= skip and line.strip():
                yield i


def _read_arrow(path, np_dtype, delimiter, skip, width, cols):
    """The chosen columns by pyarrow's CSV reader (C++, several threads: about
    3x NumPy's loadtxt), or None when pyarrow is missing or refuses the file
    (a field that is no number, a row of another width), or it holds empty,
    inf or NaN values: the other readers then take over and explain."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    keys = [f"f{c}" for c in cols]
    # Streamed batch by batch, each converted to the target dtype at once: a
    # whole float64 table first would double the peak memory.
    parts = [[] for _ in keys]
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=skip, autogenerate_column_names=True),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={k: pa.float64() for k in keys}, include_columns=keys))
        for batch in reader:
            for k, part in zip(keys, parts):
                column = batch.column(k)
                if column.null_count:  # empty fields, "nan", "NA"...
                    return None
                # float64 first, as every other path parses, then the dtype.
                values = column.to_numpy().astype(np_dtype)
                if not np.isfinite(values).all():
                    return None
                part.append(values)
    except (pa.ArrowException, ValueError):
        return None
    if not parts[0] or sum(len(p) for p in parts[0]) == 0:
        return None
    columns = []
    for part in parts:
        columns.append(np.concatenate(part))
        part.clear()  # freed column by column
    return columns


def _loadtxt(path, np_dtype, delimiter, skip, max_rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data", blank lines
        return np.loadtxt(path, dtype=np_dtype, delimiter=delimiter, skiprows=skip,
                          max_rows=max_rows, ndmin=2, encoding="utf-8-sig",
                          quotechar='"' if delimiter == "," else None)


def _read_rows(name, path, skip, names, cols, np_dtype, shard, delimiter):
    """The slow, exact pass: every data row of the shard split and converted in
    Python, so a refusal names its row, line and column."""
    lines = _data_lines(path, skip)
    n_rows = sum(1 for _ in lines) if shard is not None else None
    start, stop = _bounds(n_rows, shard) if shard is not None else (0, math.inf)
    limit = float(np.finfo(np_dtype).max)
    kind = np.dtype(np_dtype).name
    values = [array("d") for _ in cols]
    width = len(names)
    row = 0
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if number <= skip or not line.strip():
                continue
            row += 1
            if row <= start:
                continue
            if row > stop:
                break
            fields = _split(line.rstrip("\r\n"), delimiter)
            where = f"row {row} (line {number})"
            if len(fields) != width:
                raise DataFileError(f"{name} {where} has {len(fields)} fields, "
                                    f"expected {width}")
            for c, out in zip(cols, values):
                value = _number(name, where, names[c], fields[c])
                if not math.isfinite(value) or abs(value) > limit:
                    raise DataFileError(f"{name} {where}, column {names[c]}: {value} is "
                                        f"not a finite {kind} number")
                out.append(value)
    if row == 0:
        raise DataFileError(f"{name} is empty: no rows of data")
    return [np.frombuffer(out, dtype=np.float64).astype(np_dtype) for out in values]


def _split(line, delimiter):
    if delimiter == ",":
        return next(csv.reader([line]))
    if delimiter is not None:
        return line.split(delimiter)
    return line.split()


def _is_number(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(name, where, column, field) -> float:
    try:
        return float(field)
    except ValueError:
        raise DataFileError(f"{name} {where}, column {column}: "
                            f"{str(field).strip()!r} is not a number") from None


# -- NumPy files ----------------------------------------------------------------

def _load_npy(name, path, wanted, np_dtype, shard):
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(f"cannot read {name} as .npy: {_clean(e)}") from None
    if table.ndim != 2:
        raise DataFileError(f"{name} holds an array of shape {table.shape}; "
                            f"expected (N, 2): one row per point")
    _check_numeric(name, table.dtype)
    names = list(range(table.shape[1]))
    cols = _columns(name, names, wanted)
    start, stop = _bounds(table.shape[0], shard)
    if table.shape[0] == 0:
        raise DataFileError(f"{name} is empty: no rows of data")
    # One copy per column, straight from the mapped file into the target dtype.
    columns = [np.array(table[start:stop, c], dtype=np_dtype) for c in cols]
    for c, column in zip(cols, columns):
        _check_finite(name, column, table[start:stop, c], str(c), np_dtype, start)
    return columns, cols


def _load_npz(name, path, wanted, np_dtype, shard):
    try:
        # Our own handle: np.load leaves its file open when the zip is broken.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            names = list(archive.files)
            if not names:
                raise DataFileError(f"{name} is an .npz holding no arrays; expected "
                                    f"arrays x and y")
            cols = _columns(name, names, [(col, role, None, option)
                                          for col, role, _, option in wanted])
            arrays = [archive[names[c]] for c in cols]
    except DataFileError:
        raise
    except Exception as e:  # zipfile, zlib and NumPy's errors for a broken archive
        raise DataFileError(f"cannot read {name} as .npz: {_clean(e)}") from None
    for c, array_ in zip(cols, arrays):
        if not isinstance(array_, np.ndarray):
            raise DataFileError(f"{name}: member {names[c]!r} is not a NumPy array (.npy)")
        if array_.ndim != 1:
            raise DataFileError(f"{name}: array {names[c]} has shape {array_.shape}; "
                                f"expected a 1-D array of values")
        _check_numeric(name, array_.dtype)
    if len({len(a) for a in arrays}) > 1:
        sizes = ", ".join(f"{names[c]} has {len(a)}" for c, a in zip(cols, arrays))
        raise DataFileError(f"{name}: arrays of different lengths ({sizes})")
    if len(arrays[0]) == 0:
        raise DataFileError(f"{name} is empty: no rows of data")
    start, stop = _bounds(len(arrays[0]), shard)
    columns = [np.array(a[start:stop], dtype=np_dtype) for a in arrays]
    for c, column, source in zip(cols, columns, arrays):
        _check_finite(name, column, source[start:stop], names[c], np_dtype, start)
    return columns, [names[c] for c in cols]


def _load_parquet(name, path, wanted, np_dtype, shard):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(f"{name} is a Parquet file: reading it needs pyarrow "
                            f"(pip install pyarrow)") from None
    try:
        table_file = pq.ParquetFile(path)
        names = list(table_file.schema_arrow.names)
        cols = _columns(name, names, wanted)
        n_rows = table_file.metadata.num_rows
        start, stop = _bounds(n_rows, shard)
        distinct = list(dict.fromkeys(cols))
        table = table_file.read(columns=[names[c] for c in distinct]).slice(start, stop - start)
    except DataFileError:
        raise
    except Exception as e:  # pyarrow's errors for a broken file
        raise DataFileError(f"cannot read {name} as Parquet: {_clean(e)}") from None
    if n_rows == 0:
        raise DataFileError(f"{name} is empty: no rows of data")
    read = {}
    import pyarrow.types as pat
    for c in distinct:
        column = table.column(names[c])
        if not (pat.is_floating(column.type) or pat.is_integer(column.type)):
            raise DataFileError(f"{name}: column {names[c]} holds {column.type} values; "
                                f"expected numbers")
        if column.null_count:
            i = next(i for i, v in enumerate(column.is_null().to_pylist()) if v)
            raise DataFileError(f"{name} row {start + i + 1}, column {names[c]}: empty "
                                f"(null) is not a number")
        source = column.to_numpy()
        values = np.array(source, dtype=np_dtype)
        _check_finite(name, values, source, names[c], np_dtype, start)
        read[c] = values
    return [read[c] for c in cols], [names[c] for c in cols]


# -- every column as text, for predict -------------------------------------------

def _raw_text(path, n_rows):
    with open(path, encoding="utf-8-sig") as f:
        before, first = _first_row(path, f)
    delimiter = _delimiter(path, first)
    fields = [field.strip() for field in _split(first, delimiter)]
    header = not any(_is_number(field) for field in fields)
    names = fields if header else [f"column {i}" for i in range(len(fields))]
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if number > before + header and line.strip():
                rows.append([v.strip() for v in _split(line.rstrip("\r\n"), delimiter)])
    return names, [list(c) for c in zip(*rows)] if rows else [[] for _ in names]


def _raw_npy(path, n_rows):
    table = np.load(path, mmap_mode="r", allow_pickle=False)
    return ([f"column {j}" for j in range(table.shape[1])],
            [[str(v) for v in table[:, j]] for j in range(table.shape[1])])


def _raw_npz(path, n_rows):
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    kept = {k: a for k, a in arrays.items() if a.ndim == 1 and len(a) == n_rows}
    return list(kept), [[str(v) for v in a] for a in kept.values()]


def _raw_parquet(path, n_rows):
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    columns = []
    for column in table.columns:
        try:
            columns.append([str(v) for v in column.to_numpy()])
        except Exception:  # strings, nested values: as pyarrow gives them
            columns.append([str(v) for v in column.to_pylist()])
    return list(table.column_names), columns


_RAW = {_load_text: _raw_text, _load_npy: _raw_npy, _load_npz: _raw_npz,
        _load_parquet: _raw_parquet}


def _check_numeric(name, dtype):
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise DataFileError(f"{name} holds {dtype} values; expected numbers")


def _check_finite(name, column, source, label, np_dtype, start):
    bad = np.flatnonzero(~np.isfinite(column))
    if len(bad):
        i = int(bad[0])
        raise DataFileError(f"{name} row {start + i + 1}, column {label}: "
                            f"{float(source[i])} is not a finite "
                            f"{np.dtype(np_dtype).name} number")


class _Unchosen(DataFileError):
    """A column that must be chosen and was not: (role, option)."""


def _columns(name, names, wanted) -> list:
    """The index of each wanted column (_column), or one error naming every
    choice that is missing."""
    cols, missing = [], []
    for want in wanted:
        try:
            cols.append(_column(name, names, *want))
        except _Unchosen as e:
            missing.append(e)
    if len(missing) == 1:
        raise DataFileError(missing[0].args[0]) from None
    if missing:
        shown = ", ".join(str(n) for n in names)
        kind = "arrays" if wanted[0][2] is None else f"{len(names)} column(s)"
        choices = " and ".join(f"the {e.args[1]} with {e.args[2]}" for e in missing)
        raise DataFileError(f"{name} has {kind} ({shown}); choose {choices}")
    return cols


def _column(name, names, col, role, default_index, option) -> int:
    """The index in `names` of the column that `col` (None, a name or an
    index) picks for `role` ("x" or "y"); default_index None: by name only.
    `option` is what messages call col."""
    shown = ", ".join(str(n) for n in names)
    if col is None:
        if role in names:
            return names.index(role)
        if default_index is not None and len(names) <= 2 and default_index < len(names):
            return default_index
        what = "arrays" if default_index is None else f"{len(names)} column(s)"
        kind = f"{role} {'array' if default_index is None else 'column'}"
        raise _Unchosen(f"{name} has {what} ({shown}); choose the {kind} with {option}",
                        kind, option)
    if col in names:
        return names.index(col)
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
        if 0 <= int(col) < len(names):
            return int(col)
    raise DataFileError(f"{option} {col!r} is not a column of {name} "
                        f"(columns: {shown}; or a 0-based index)")
