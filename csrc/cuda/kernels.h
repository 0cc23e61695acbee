// Launchers of the torch-free CUDA kernels (cuda/kernels.cu, built by nvcc). Each returns a
// cudaError_t as int (0 = success) and runs on the given cudaStream_t (passed as void*).
#pragma once
#include <cstdint>

extern "C" {
int timemar_interp_accumulate_f32(float* f_hat, const float* codebook, const int64_t* idx,
                                  const float* weight, const float* bias, float alpha, int64_t B,
                                  int64_t D, int64_t L, int64_t s, float* down, int64_t n,
                                  void* stream);
int timemar_interp_accumulate_f64(double* f_hat, const double* codebook, const int64_t* idx,
                                  const double* weight, const double* bias, double alpha,
                                  int64_t B, int64_t D, int64_t L, int64_t s, double* down,
                                  int64_t n, void* stream);
int timemar_decode_epilogue(const float* trend, const float* coarse, const float* fine,
                            const double* span, const double* lo, int64_t B, int64_t C, int64_t T,
                            float* out, void* stream);
int timemar_cuda_device_count();
const char* timemar_cuda_error_string(int err);
}
