// Instantiates every kernel of csrc/cuda/kernels*.cuh for both dtypes, for
// tests/test_cuda_build.py: compiled to PTX with FMA contraction ON
// (--fmad=true), their math must still contain no fused multiply-add,
// because csrc/core/rounding.h rounds each multiply and add on its own.
#include "cuda/launch.h"
#include "cuda/launch_batched.h"
#include "cuda/launch_many.h"

namespace bc = biasfit::cuda;

template <typename T>
void* probe() {
  void* kernels[] = {
      reinterpret_cast<void*>(bc::predict_kernel<T>),
      reinterpret_cast<void*>(bc::partial_sums_kernel<true, bc::LossPoint<T>, T>),
      reinterpret_cast<void*>(bc::partial_sums_kernel<false, bc::BiasGradPoint<T>, T>),
      reinterpret_cast<void*>(bc::finish_kernel<bc::LossSink<T>>),
      reinterpret_cast<void*>(bc::fit_one_block_kernel<true, T>),
      reinterpret_cast<void*>(bc::fit_one_block_kernel<false, T>),
      reinterpret_cast<void*>(bc::fit_epoch_kernel<true, T, bc::FitDeviceState<T>>),
      reinterpret_cast<void*>(bc::fit_start_kernel<T>),
      reinterpret_cast<void*>(bc::fit_publish_kernel<T>),
      // Every gradient and fit_params.
      reinterpret_cast<void*>(bc::partial_sums_kernel<true, bc::LossGradsPoint<T>, T>),
      reinterpret_cast<void*>(bc::partial_sums_kernel<false, bc::PredictGradsPoint<T>, T>),
      reinterpret_cast<void*>(bc::finish_kernel<bc::ParamGradsSink<T>>),
      reinterpret_cast<void*>(bc::finish_kernel<bc::ParamSumsSink>),
      reinterpret_cast<void*>(bc::fit_params_one_block_kernel<true, T>),
      reinterpret_cast<void*>(bc::fit_epoch_kernel<true, T, bc::ParamFitDeviceState<T>>),
      reinterpret_cast<void*>(bc::fit_params_start_kernel<T>),
      reinterpret_cast<void*>(bc::fit_params_publish_kernel<T>),
      // The batched ops (vmap's).
      reinterpret_cast<void*>(bc::batched_predict_kernel<T>),
      reinterpret_cast<void*>(bc::batched_partial_sums_kernel<true, bc::LossPoint<T>, T>),
      reinterpret_cast<void*>(bc::batched_partial_sums_kernel<false, bc::LossGradsPoint<T>, T>),
      reinterpret_cast<void*>(bc::batched_partial_sums_kernel<true, bc::PredictGradsPoint<T>, T>),
      reinterpret_cast<void*>(bc::batched_finish_kernel<bc::LossRows<T>>),
      reinterpret_cast<void*>(bc::batched_finish_kernel<bc::ParamGradsRows<T>>),
      // fit_many's routes.
      reinterpret_cast<void*>(bc::many_thread_kernel<T>),
      reinterpret_cast<void*>(bc::many_team_kernel<bc::kWarpSize, T>),
      reinterpret_cast<void*>(bc::many_team_kernel<bc::kThreads, T>),
  };
  return kernels[0];
}

void* probe_all() { return probe<float>() == probe<double>() ? nullptr : probe<float>(); }
