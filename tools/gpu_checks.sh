#!/usr/bin/env bash
# The checks that need a GPU, in one go: the CUDA tests under each of
# compute-sanitizer's tools, then the GPU benchmarks; every log and the
# benchmark JSON go to benchmarks/results/gpu/. Run from the checkout, in an
# environment with a CUDA torch and biasfit built with CUDA
# (BIASFIT_CUDA=1 pip install --no-build-isolation -e ".[test]").
#
#   tools/gpu_checks.sh            # sanitizers + benchmarks
#   tools/gpu_checks.sh --quick    # sanitizers only
#
# Exit status: 0 when every step passed, else the number of failed steps.
# This has not yet run anywhere: no GPU was lent when it was written.
set -u
cd "$(dirname "$0")/.."
out=benchmarks/results/gpu
mkdir -p "$out"
failed=0

python - <<'PY' || { echo "gpu_checks: needs a CUDA GPU and a CUDA build of biasfit" >&2; exit 1; }
import torch, biasfit
assert torch.cuda.is_available() and biasfit.WITH_CUDA
PY

sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
{
  date -u +%Y-%m-%dT%H:%MZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$out/machine.txt" 2>&1

# The tests that launch kernels; the 2^31 one needs ~28 GB and is too slow
# under the sanitizers, so it runs once, natively, below.
tests=(tests/test_cuda.py -k "not more_than_2_to_the_31")
for tool in memcheck racecheck synccheck; do
  echo "gpu_checks: compute-sanitizer --tool $tool"
  # --error-exitcode makes any report fail the step, whatever pytest says.
  if ! "$sanitizer" --tool "$tool" --error-exitcode 99 --target-processes all \
      python -m pytest -q -x "${tests[@]}" > "$out/sanitizer_$tool.log" 2>&1; then
    echo "gpu_checks: $tool FAILED (see $out/sanitizer_$tool.log)" >&2
    failed=$((failed + 1))
  fi
done

echo "gpu_checks: tests/test_cuda.py natively"
if ! python -m pytest -q -rs tests/test_cuda.py tests/test_cuda_emulated.py \
    > "$out/tests.log" 2>&1; then
  echo "gpu_checks: tests FAILED (see $out/tests.log)" >&2
  failed=$((failed + 1))
fi

if [ "${1:-}" != "--quick" ]; then
  echo "gpu_checks: benchmarks"
  if ! python -m pytest -q benchmarks/bench_cuda.py --benchmark-only \
      --benchmark-json="$out/bench_cuda.json" > "$out/bench_cuda.log" 2>&1; then
    echo "gpu_checks: benchmarks FAILED (see $out/bench_cuda.log)" >&2
    failed=$((failed + 1))
  fi
fi

echo "gpu_checks: $failed step(s) failed; results in $out/"
exit "$failed"
