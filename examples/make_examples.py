"""Writes the small data files that the README's and docs/' examples read.

    python examples/make_examples.py

Deterministic (the standard library only; the noise of noisy.csv.gz comes from
random.Random with a fixed seed, the same numbers on every Python): running it
again gives the same files, and tests/test_docs_examples.py checks that it does
(noisy.csv.gz by its decompressed text: the compressor's bytes may vary).
"""
import gzip
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The tutorial's frozen weights (biasfit.TUTORIAL_WEIGHTS): w00, b00, w01, w10, b10, w11.
W00, B00, W01, W10, B10, W11 = 1.7, -0.85, -40.8, 12.6, 0.0, 2.7


def network(x, final_bias):
    """The tutorial's network, in float64 (the labels of points200.csv)."""
    top = max(W00 * x + B00, 0.0)
    bottom = max(W10 * x + B10, 0.0)
    return max(W01 * top + W11 * bottom + final_bias, 0.0)


def noisy(n=10_000, seed=27):
    """n samples of real-looking data: an id, a dose in [0, 1] and a response,
    the network's at final_bias -16 plus normal noise (sd 0.1), 6 digits."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x = round(rng.random(), 6)
        y = round(network(x, -16.0) + rng.gauss(0.0, 0.1), 6)
        rows.append(f"s{i:05d},{x!r},{y!r}\n")
    return "sample,dose,response\n" + "".join(rows)


FILES = {
    # Five doses and their effects: the tutorial's three points and two more.
    "doses.csv": "dose,effect\n0.0,0.0\n0.25,0.5\n0.5,1.0\n0.75,0.5\n1.0,0.0\n",
    # The same with a typing mistake in row 2 (line 3): the error example.
    "typo.csv": "dose,effect\n0.0,0.0\n0.25,0.5\n0.5,high\n0.75,0.5\n1.0,0.0\n",
    # 200 doses evenly spaced over [0, 1], labelled by the network at final_bias -16.
    "points200.csv": "x,y\n" + "".join(
        f"{i / 199!r},{network(i / 199, -16.0)!r}\n" for i in range(200)),
    # A plate of three compounds' doses and effects (docs/many.md: one fit each).
    "plate.csv": ("compound,dose,effect\nA,0.0,0.0\nA,0.5,1.0\nA,1.0,0.0\nB,0.0,0.0\n"
                  "B,0.25,0.4\nB,0.5,1.0\nB,0.75,0.5\nB,1.0,0.0\nC,0.0,0.05\nC,0.5,0.95\n"
                  "C,1.0,0.0\n"),
}


# Compressed: what such data usually comes as (gzip, no time stamp inside).
GZIPPED = {"noisy.csv.gz": noisy()}


def main():
    for name, text in FILES.items():
        (HERE / name).write_text(text)
    for name, text in GZIPPED.items():
        (HERE / name).write_bytes(gzip.compress(text.encode(), mtime=0))


if __name__ == "__main__":
    main()
