"""biasfit.datafile in-process: formats, column choice, and rank shards.

The command line's error messages for bad files are checked end to end in
test_cli.py; here is what a caller of load_xy relies on.
"""
import numpy as np
import pytest
import torch

from biasfit.datafile import DataFileError, load_x, load_xy, shard_bounds

X = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
Y = [0.0, 1.0, 0.0, 0.25, -1.0, 2.0, 0.125]


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture(params=["csv_header", "csv_plain", "whitespace", "tab", "npy", "npz"])
def data_file(request, tmp_path):
    """The same seven points in each format."""
    kind = request.param
    rows = list(zip(X, Y))
    if kind == "csv_header":
        return write(tmp_path / "d.csv", "x,y\n" + "".join(f"{a},{b}\n" for a, b in rows))
    if kind == "csv_plain":
        return write(tmp_path / "d.csv", "".join(f"{a},{b}\n" for a, b in rows))
    if kind == "whitespace":
        return write(tmp_path / "d.txt", "".join(f"  {a}   {b}\n\n" for a, b in rows))
    if kind == "tab":
        return write(tmp_path / "d.tsv", "".join(f"{a}\t{b}\n" for a, b in rows))
    if kind == "npy":
        np.save(tmp_path / "d.npy", np.array(rows))
        return tmp_path / "d.npy"
    np.savez(tmp_path / "d.npz", x=np.array(X), y=np.array(Y))
    return tmp_path / "d.npz"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_format_reads_the_same_points(data_file, dtype):
    x, y = load_xy(data_file, dtype=dtype)
    assert x.dtype == y.dtype == dtype
    assert x.is_contiguous() and y.is_contiguous()
    assert x.tolist() == X and y.tolist() == Y
    assert load_x(data_file, dtype=dtype).tolist() == X


def test_columns_by_name_or_index(tmp_path):
    path = write(tmp_path / "d.csv", "id,dose,effect\n7,0.5,1\n8,1,0\n")
    x, y = load_xy(path, "dose", "effect")
    assert x.tolist() == [0.5, 1.0] and y.tolist() == [1.0, 0.0]
    x, y = load_xy(path, 2, "1")
    assert x.tolist() == [1.0, 0.0] and y.tolist() == [0.5, 1.0]
    with pytest.raises(DataFileError, match="3 column.*choose the x column with x_col"):
        load_xy(path)
    with pytest.raises(DataFileError, match="y_col 'dos' is not a column"):
        load_xy(path, "dose", "dos")


def test_file_named_as_csv_but_holding_npy_is_read_by_its_content(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[1.0, 2.0]]))
    (tmp_path / "d.npy").rename(tmp_path / "d.csv")
    assert [t.tolist() for t in load_xy(tmp_path / "d.csv")] == [[1.0], [2.0]]


def test_errors_are_data_file_errors_and_value_errors(tmp_path):
    path = write(tmp_path / "d.csv", "x,y\n1,2\n3,x\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), column y: 'x' is not a number"):
        load_xy(path)
    assert issubclass(DataFileError, ValueError)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 10, 64])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_are_contiguous_balanced_and_cover_every_row_once(n, world_size):
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == nxt for (_, stop), (nxt, _) in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    expected = [len(t) for t in torch.tensor_split(torch.arange(n), world_size)]
    assert sizes == expected


def test_load_xy_by_rank_returns_its_block_in_every_format(data_file):
    world_size = 3
    parts = [load_xy(data_file, rank=r, world_size=world_size) for r in range(world_size)]
    assert [len(x) for x, _ in parts] == [3, 2, 2]
    assert torch.cat([x for x, _ in parts]).tolist() == X
    assert torch.cat([y for _, y in parts]).tolist() == Y


def test_a_shard_does_not_parse_other_ranks_rows(tmp_path):
    path = write(tmp_path / "d.csv", "x,y\n0,0\n1,1\n2,oops\n3,3\n")
    x, y = load_xy(path, rank=0, world_size=2)
    assert x.tolist() == [0.0, 1.0]
    with pytest.raises(DataFileError, match=r"row 3 \(line 4\), column y"):
        load_xy(path, rank=1, world_size=2)


def test_more_ranks_than_rows_gives_empty_shards(tmp_path):
    path = write(tmp_path / "d.csv", "0,1\n")
    x, y = load_xy(path, rank=3, world_size=4)
    assert x.shape == y.shape == (0,) and x.dtype == torch.float32


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0), (None, 2), (0, 1.0)])
def test_bad_rank_or_world_size_is_refused(tmp_path, rank, world_size):
    path = write(tmp_path / "d.csv", "0,1\n")
    with pytest.raises(ValueError, match="rank|world_size"):
        load_xy(path, rank=rank, world_size=world_size)


@pytest.mark.parametrize("text", ["", "\n\n", "x,y\n"])
def test_a_file_without_data_rows_is_empty(tmp_path, text):
    with pytest.raises(DataFileError, match="is empty: no rows of data"):
        load_xy(write(tmp_path / "d.csv", text))


# -- issue 14: what Excel, pipes and hostile files hand us ----------------------------

def test_a_utf8_bom_is_not_part_of_the_first_name_or_number(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffdose,effect\r\n0.5,1\r\n1,0\r\n".encode())
    x, y, names = load_xy(path, "dose", "effect", with_names=True)
    assert x.tolist() == [0.5, 1.0] and y.tolist() == [1.0, 0.0]
    assert names == ["dose", "effect"]
    path.write_bytes("\ufeff0.5,1\n".encode())
    assert [t.tolist() for t in load_xy(path)] == [[0.5], [1.0]]


def test_binary_input_is_refused_from_its_first_block(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(b"0,1\n" + b"\0" * 100)
    with pytest.raises(DataFileError, match="is not a UTF-8 text, .npy, .npz or Parquet file"):
        load_xy(path)


def test_a_text_column_that_is_not_used_does_not_stop_the_read(tmp_path):
    path = write(tmp_path / "d.csv", "name,dose,effect\nalice,0.5,1\nbob,1,0\n")
    x, y = load_xy(path, "dose", "effect")
    assert x.tolist() == [0.5, 1.0] and y.tolist() == [1.0, 0.0]


def test_values_are_parsed_as_python_parses_them(tmp_path):
    values = ["0.1", "1e-45", "3.4028235e38", "-0.0", "123456789.123456789", " 7 "]
    path = write(tmp_path / "d.csv", "".join(f"{v},{v}\n" for v in values))
    for dtype in (torch.float32, torch.float64):
        x, _ = load_xy(path, dtype=dtype)
        assert x.tolist() == torch.tensor([float(v) for v in values], dtype=dtype).tolist()


def test_npz_arrays_by_name_only(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros(2), b=np.ones(2))
    with pytest.raises(DataFileError, match=r"has arrays \(a, b\); choose the x array"):
        load_xy(tmp_path / "d.npz")
    x, y, names = load_xy(tmp_path / "d.npz", "a", "b", with_names=True)
    assert (x.tolist(), y.tolist(), names) == ([0.0, 0.0], [1.0, 1.0], ["a", "b"])


def test_an_empty_or_broken_npz_is_one_printable_line(tmp_path):
    np.savez(tmp_path / "e.npz")
    with pytest.raises(DataFileError, match="is an .npz holding no arrays") as err:
        load_xy(tmp_path / "e.npz")
    assert str(err.value).isprintable()
    np.savez(tmp_path / "g.npz", x=np.zeros(100), y=np.zeros(100))
    (tmp_path / "b.npz").write_bytes((tmp_path / "g.npz").read_bytes()[:300])
    with pytest.raises(DataFileError, match="cannot read .* as .npz") as err:
        load_xy(tmp_path / "b.npz")
    assert str(err.value).isprintable()


def test_dash_reads_standard_input(monkeypatch):
    import io
    import types
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(
        buffer=io.BytesIO(b"x,y\n0,0\n0.5,1\n")))
    x, y = load_xy("-")
    assert x.tolist() == [0.0, 0.5] and y.tolist() == [0.0, 1.0]


def test_errors_name_stdin(monkeypatch):
    import io
    import types
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(b"0,1\n0,z\n")))
    with pytest.raises(DataFileError, match=r"^stdin row 2 \(line 2\), column 1: 'z'"):
        load_xy("-")


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_of_a_file_with_blank_lines_and_a_header(tmp_path, world_size):
    rows = [(i * 0.5, i * 0.25) for i in range(7)]
    text = "\n x,y\n" + "".join(f"{a},{b}\n\n" for a, b in rows)
    path = write(tmp_path / "d.csv", text)
    parts = [load_xy(path, rank=r, world_size=world_size) for r in range(world_size)]
    assert torch.cat([x for x, _ in parts]).tolist() == [a for a, _ in rows]
    assert torch.cat([y for _, y in parts]).tolist() == [b for _, b in rows]


@pytest.mark.parametrize("text", ["x,y\n0,0\n0.5,1\n\n1,0\n", "0\t0\n0.5\t1\n1\t0\n",
                                  '"x","y"\n"0","0"\n0.5,1\n1,0\n'])
def test_numpys_reader_gives_what_pyarrows_gives(tmp_path, monkeypatch, text):
    path = write(tmp_path / "d.csv", text)
    fast = [t.tolist() for t in load_xy(path)]
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # import fails
    assert [t.tolist() for t in load_xy(path)] == fast == [[0.0, 0.5, 1.0], [0.0, 1.0, 0.0]]


@pytest.mark.parametrize("kind", ["csv", "npy", "npz"])
def test_a_value_past_float32_is_named_without_warnings(tmp_path, kind, recwarn):
    if kind == "csv":
        path = write(tmp_path / "d.csv", "x,y\n0,0\n1,1e39\n")
    elif kind == "npy":
        path = tmp_path / "d.npy"
        np.save(path, np.array([[0.0, 0.0], [1.0, 1e39]]))
    else:
        path = tmp_path / "d.npz"
        np.savez(path, x=np.array([0.0, 1.0]), y=np.array([0.0, 1e39]))
    with pytest.raises(DataFileError, match=r"row 2.*1e\+39 is not a finite float32"):
        load_xy(path)
    assert [str(w.message) for w in recwarn] == []
    assert load_xy(path, dtype=torch.float64)[1].tolist() == [0.0, 1e39]
