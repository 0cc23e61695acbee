// The op set of timemar_engine._C: schemas (one TORCH_LIBRARY block) and the Python module.
// CPU kernels: cpu/*.cpp; CUDA kernels: cuda/*.cu (torch-free, built by nvcc) registered in
// cuda/ops_cuda.cpp. Python calls torch.ops.timemar.<op>; the dispatcher picks the device.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(timemar, m) {
  // f_hat (B, D, L) += phi(linear_up(codebook[idx], L)) in place; returns area_down(f_hat, next_size)
  // (B, D, next_size), or (B, D, 0) when next_size == 0 (the last scale).
  // phi(h) = (1 - alpha) h + alpha (conv3(h) + bias), conv3 zero-padded, weight (D, D, 3).
  m.def("interp_accumulate(Tensor(a!) f_hat, Tensor codebook, Tensor idx, Tensor weight, "
        "Tensor bias, float alpha, int next_size) -> Tensor");
  // Decoder components (B, C, T) -> windows (B, T, C) float32: clamp(trend + coarse + fine, -1, 1),
  // then, when span / lo (C,) float64 are given, u = (x + 1) / 2 mapped to u * span + lo (lo where
  // span <= 0), computed as numpy does for MinMaxScaler.from_unit (float64, then cast).
  m.def("decode_epilogue(Tensor trend, Tensor coarse, Tensor fine, Tensor? span, Tensor? lo) "
        "-> Tensor");
  // int8 linear layers (CPU; cpu/int8_rows.cpp): rows of x (M, K) float32, layer-normed first when
  // weight / bias are given, to q (M, K) int8 = rint(y * 127 / max|y|) with scale (M,) = max|y| / 127.
  m.def("quantize_rows(Tensor x, Tensor? weight, Tensor? bias, float eps, Tensor(a!) q, "
        "Tensor(b!) scale) -> ()");
  // out (M, N) float32 = acc (M, N) int32 * x_scale (M,) * w_scale (N,) + bias (N,), or += it.
  m.def("dequant_rows(Tensor acc, Tensor x_scale, Tensor w_scale, Tensor bias, Tensor(a!) out, "
        "bool accumulate) -> ()");
}

#ifdef WITH_CUDA
#include "cuda/kernels.h"
bool cuda_compiled() { return true; }
int cuda_device_count() { return timemar_cuda_device_count(); }
#else
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "timemar-engine C++/CUDA ops (registered as torch.ops.timemar.*)";
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled into this build");
  m.def("cuda_device_count", &cuda_device_count, "GPUs the CUDA runtime of this build sees");
}
