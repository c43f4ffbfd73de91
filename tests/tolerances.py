"""The tests' tolerances, one table per compared quantity, per dtype.

Each bound is relative (to the value, or to the scale of what a sum adds up,
where the test says so). docs/numerics.md shows this very table, and
tests/test_docs_examples.py checks that the two agree: a bound changes here
and in the docs together. Index a bound by a torch dtype, a NumPy dtype or
scalar type, or a name: ENGINES[torch.float32] == ENGINES["float32"].
"""


class PerDtype(dict):
    """{"float64": bound, "float32": bound}, indexed by any spelling of the dtype."""

    def __getitem__(self, dtype):
        name = getattr(dtype, "__name__", None) or str(dtype)  # np.float32, np.dtype
        return super().__getitem__(name.rsplit(".", 1)[-1])  # "torch.float32"


def per_dtype(float64, float32):
    return PerDtype(float64=float64, float32=float32)


# An op's loss and bias gradient against the plain-PyTorch reference
# (biasfit/reference.py); float32: the reference sums in float32.
REFERENCE = per_dtype(1e-10, 1e-5)
# biasfit on the tutorial's data (and a few more points) against the
# tutorial's own module and loop: the loss, the bias gradient, every epoch.
TUTORIAL = per_dtype(1e-10, 1e-6)
# Every gradient sum (the seven parameters') against autograd over the
# reference: float64 accumulation on both sides; float32 measured worst 1.1e-7.
GRAD_SUMS = per_dtype(1e-10, 1e-6)
# Per-point gradients (labels', inputs') against autograd; float32 measured
# worst 2.9e-7.
GRAD_POINTS = per_dtype(1e-13, 1e-6)
# The fused engine against the autograd engine: every epoch's loss, the final
# bias and parameters (measured worst 8.5e-16 and 3.4e-7).
ENGINES = per_dtype(1e-12, 1e-5)
# The same for SGD on final_bias over large steps: torch's add_ may fuse a
# multiply-add where biasfit rounds twice, and later steps compound it
# (measured worst 7.2e-5 over 1248 fits of 100 epochs, tests/test_fit.py).
ENGINES_SGD = per_dtype(1e-12, 1e-4)
# CUDA against the CPU: sums in another order, fits over them.
CPU_GPU = per_dtype(1e-12, 1e-5)
# N copies of one point (an expanded view) against N times that point's
# value: float32 rounds the point and the total once each.
SUM_OF_COPIES = per_dtype(1e-12, 2 ** -22)
# A fit sharded under torch.distributed against one process on all the data
# (measured worst 2.2e-13 in float64, 2.4e-6 in float32 with autograd).
SHARDED = per_dtype(1e-12, 1e-5)
# The fused engine's final_bias fit, sharded: float64 sums are sent, so float32
# keeps float64's bound.
SHARDED_FUSED_BIAS = per_dtype(1e-12, 1e-12)
# The CPU trainer's plans against streaming (regrouped: float64 additions in
# another order; closed: see csrc/cpu/closed_form.h).
PLANS = per_dtype(1e-13, 1e-6)

# The ops under transforms (second derivatives, jvp, torch.func, compile)
# against autograd over the plain network: derivatives past the first are
# torch ops on both sides, summed in the data's dtype.
TRANSFORMS = per_dtype(1e-10, 1e-5)

TABLE = {name: value for name, value in globals().items() if isinstance(value, PerDtype)}
