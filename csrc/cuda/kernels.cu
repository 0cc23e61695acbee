// CUDA kernels of timemar_engine._C, torch-free (only the CUDA runtime), so they build with nvcc
// against any torch, including the CPU wheel; ops_cuda.cpp registers them for CUDA tensors.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace {

constexpr int kThreads = 256;

// One block per window: the up-interpolated codes (L x D, zero rows for the conv padding) live in
// shared memory; each thread computes outputs (co, t) of phi, adds them into f_hat, then the block
// computes the area-down means of the updated f_hat.
template <typename T>
__global__ void interp_accumulate_kernel(T* __restrict__ f_hat, const T* __restrict__ codebook,
                                         const int64_t* __restrict__ idx,
                                         const T* __restrict__ weight, const T* __restrict__ bias,
                                         T alpha, int D, int L, int s, T* __restrict__ down, int n) {
  extern __shared__ unsigned char smem_raw[];
  T* up = reinterpret_cast<T*>(smem_raw);  // (L + 2) x D, time-major
  const int b = blockIdx.x;
  const int64_t* ib = idx + static_cast<int64_t>(b) * s;
  const T scale = static_cast<T>(s) / static_cast<T>(L);
  for (int e = threadIdx.x; e < (L + 2) * D; e += blockDim.x) {
    const int row = e / D, d = e % D, t = row - 1;
    T v = 0;
    if (t >= 0 && t < L) {
      T src = scale * (static_cast<T>(t) + T(0.5)) - T(0.5);
      if (src < 0) src = 0;
      const int i0 = static_cast<int>(src);
      const int i1 = i0 + (i0 < s - 1 ? 1 : 0);
      const T l1 = src - static_cast<T>(i0);
      v = (T(1) - l1) * codebook[ib[i0] * D + d] + l1 * codebook[ib[i1] * D + d];
    }
    up[e] = v;
  }
  __syncthreads();
  const T keep = T(1) - alpha;
  T* fb = f_hat + static_cast<int64_t>(b) * D * L;
  for (int e = threadIdx.x; e < D * L; e += blockDim.x) {
    const int co = e / L, t = e % L;
    T acc = bias[co];
    const T* w = weight + static_cast<int64_t>(co) * D * 3;  // weight[co][ci][j]
    for (int ci = 0; ci < D; ++ci)
      for (int j = 0; j < 3; ++j) acc += w[ci * 3 + j] * up[(t + j) * D + ci];
    fb[e] += up[(t + 1) * D + co] * keep + acc * alpha;
  }
  if (n == 0) return;
  __syncthreads();  // the block's f_hat writes are visible to the whole block after this
  T* db = down + static_cast<int64_t>(b) * D * n;
  for (int e = threadIdx.x; e < D * n; e += blockDim.x) {
    const int d = e / n, i = e % n;
    const int start = (i * L) / n, end = ((i + 1) * L + n - 1) / n;
    T sum = 0;
    for (int t = start; t < end; ++t) sum += fb[d * L + t];
    db[e] = sum / static_cast<T>(end - start);
  }
}

__global__ void decode_epilogue_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                       const float* __restrict__ c, const double* __restrict__ span,
                                       const double* __restrict__ lo, int64_t total, int C, int T,
                                       float* __restrict__ out) {
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int ch = static_cast<int>(o % C);
    const int64_t bt = o / C;
    const int t = static_cast<int>(bt % T);
    const int64_t in = (bt / T) * C * T + static_cast<int64_t>(ch) * T + t;
    float x = __fadd_rn(__fadd_rn(a[in], b[in]), c[in]);
    x = x < -1.f ? -1.f : (x > 1.f ? 1.f : x);
    if (span) {
      const float u = __fdiv_rn(__fadd_rn(x, 1.f), 2.f);
      x = span[ch] > 0 ? static_cast<float>(__dadd_rn(__dmul_rn(u, span[ch]), lo[ch]))
                       : static_cast<float>(lo[ch]);
    }
    out[o] = x;
  }
}

template <typename T>
int launch_interp(T* f_hat, const T* codebook, const int64_t* idx, const T* weight, const T* bias,
                  T alpha, int64_t B, int64_t D, int64_t L, int64_t s, T* down, int64_t n,
                  void* stream) {
  if (B == 0) return 0;
  const size_t smem = static_cast<size_t>(L + 2) * D * sizeof(T);
  if (smem > 48 * 1024) return static_cast<int>(cudaErrorInvalidConfiguration);
  interp_accumulate_kernel<T><<<static_cast<unsigned>(B), kThreads, smem,
                                static_cast<cudaStream_t>(stream)>>>(
      f_hat, codebook, idx, weight, bias, alpha, static_cast<int>(D), static_cast<int>(L),
      static_cast<int>(s), down, static_cast<int>(n));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

int timemar_interp_accumulate_f32(float* f_hat, const float* codebook, const int64_t* idx,
                                  const float* weight, const float* bias, float alpha, int64_t B,
                                  int64_t D, int64_t L, int64_t s, float* down, int64_t n,
                                  void* stream) {
  return launch_interp(f_hat, codebook, idx, weight, bias, alpha, B, D, L, s, down, n, stream);
}

int timemar_interp_accumulate_f64(double* f_hat, const double* codebook, const int64_t* idx,
                                  const double* weight, const double* bias, double alpha,
                                  int64_t B, int64_t D, int64_t L, int64_t s, double* down,
                                  int64_t n, void* stream) {
  return launch_interp(f_hat, codebook, idx, weight, bias, alpha, B, D, L, s, down, n, stream);
}

int timemar_decode_epilogue(const float* trend, const float* coarse, const float* fine,
                            const double* span, const double* lo, int64_t B, int64_t C, int64_t T,
                            float* out, void* stream) {
  const int64_t total = B * C * T;
  if (total == 0) return 0;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  decode_epilogue_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(trend, coarse, fine, span, lo,
                                                                total, static_cast<int>(C),
                                                                static_cast<int>(T), out);
  return static_cast<int>(cudaGetLastError());
}

int timemar_cuda_device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

const char* timemar_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}
}
