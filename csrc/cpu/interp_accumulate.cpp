// CPU: f_hat += phi(linear_up(codebook[idx])), then the area-down input of the next scale.
// One window per task (at::parallel_for); time-major scratch, and phi's conv as register tiles of
// 4 time steps x 16 output channels (the inner loops run over contiguous channels and vectorise).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kRows = 4;  // time steps per register tile of the phi conv

template <typename T>
inline T mul_add(T x, T w, T acc) {
#ifdef __FMA__
  return std::fma(x, w, acc);
#else
  return acc + x * w;
#endif
}

// phi's conv for kRows time steps from t0 and CB output channels from co0: a register tile
// acc[kRows][CB] summed over the 3 taps and D input channels (one broadcast of up[t][ci] times
// a contiguous row of wt[j][ci][co0:co0+CB] per step, which the compiler keeps in vectors).
template <typename T, int CB>
inline void conv_tile(const T* up, const T* wt, const T* bias, int64_t D, int64_t t0, int64_t co0,
                      T (&acc)[kRows][CB]) {
  for (int64_t r = 0; r < kRows; ++r)
    for (int c = 0; c < CB; ++c) acc[r][c] = bias[co0 + c];
  for (int64_t j = 0; j < 3; ++j) {
    for (int64_t ci = 0; ci < D; ++ci) {
      const T* w = wt + (j * D + ci) * D + co0;
      for (int64_t r = 0; r < kRows; ++r) {
        const T x = up[(t0 + r + j) * D + ci];  // position t0 + r + j - 1 (row 0 is padding)
        for (int c = 0; c < CB; ++c) acc[r][c] = mul_add(x, w[c], acc[r][c]);
      }
    }
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// The float 4 x 16 tile in AVX2: 8 accumulators, two weight vectors and one broadcast per step.
template <>
inline void conv_tile<float, 16>(const float* up, const float* wt, const float* bias, int64_t D,
                                 int64_t t0, int64_t co0, float (&acc)[kRows][16]) {
  __m256 a[kRows][2];
  const __m256 b0 = _mm256_loadu_ps(bias + co0), b1 = _mm256_loadu_ps(bias + co0 + 8);
  for (int64_t r = 0; r < kRows; ++r) a[r][0] = b0, a[r][1] = b1;
  for (int64_t j = 0; j < 3; ++j) {
    const float* u = up + (t0 + j) * D;
    const float* w = wt + j * D * D + co0;
    for (int64_t ci = 0; ci < D; ++ci, w += D) {
      const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
      for (int64_t r = 0; r < kRows; ++r) {
        const __m256 x = _mm256_broadcast_ss(u + r * D + ci);
        a[r][0] = _mm256_fmadd_ps(x, w0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(x, w1, a[r][1]);
      }
    }
  }
  for (int64_t r = 0; r < kRows; ++r) {
    _mm256_storeu_ps(acc[r], a[r][0]);
    _mm256_storeu_ps(acc[r] + 8, a[r][1]);
  }
}
#endif

template <typename T, int CB>
void interp_accumulate_kernel(T* f_hat, const T* codebook, const int64_t* idx, const T* wt,
                              const T* bias, T alpha, int64_t B, int64_t D, int64_t L, int64_t s,
                              T* down, int64_t n) {
  const T keep = static_cast<T>(1.0 - static_cast<double>(alpha));
  const T scale = static_cast<T>(s) / static_cast<T>(L);  // half-pixel linear, as ATen
  const int64_t tiles = (L + kRows - 1) / kRows;
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    // up: rows 1..L hold positions 0..L-1; row 0 and rows L+1.. are zero (conv padding and
    // the tail of the last tile)
    std::vector<T> up((tiles * kRows + 2) * D, T(0));
    T acc[kRows][CB];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t* ib = idx + b * s;
      for (int64_t t = 0; t < L; ++t) {
        T src = scale * (static_cast<T>(t) + T(0.5)) - T(0.5);
        if (src < 0) src = 0;
        const int64_t i0 = static_cast<int64_t>(src);
        const int64_t i1 = i0 + (i0 < s - 1 ? 1 : 0);
        const T l1 = src - static_cast<T>(i0), l0 = T(1) - l1;
        const T* c0 = codebook + ib[i0] * D;
        const T* c1 = codebook + ib[i1] * D;
        T* u = up.data() + (t + 1) * D;
        for (int64_t d = 0; d < D; ++d) u[d] = l0 * c0[d] + l1 * c1[d];
      }
      T* fb = f_hat + b * D * L;
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t t0 = tile * kRows, rows = std::min(kRows, L - t0);
        for (int64_t co0 = 0; co0 < D; co0 += CB) {
          conv_tile<T, CB>(up.data(), wt, bias, D, t0, co0, acc);
          for (int64_t r = 0; r < rows; ++r) {
            const T* u = up.data() + (t0 + r + 1) * D + co0;
            for (int c = 0; c < CB; ++c)
              fb[(co0 + c) * L + t0 + r] += u[c] * keep + acc[r][c] * alpha;
          }
        }
      }
      if (n == 0) continue;
      T* db = down + b * D * n;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t start = (i * L) / n, end = ((i + 1) * L + n - 1) / n;
        const T count = static_cast<T>(end - start);
        for (int64_t d = 0; d < D; ++d) {
          const T* row = fb + d * L;
          T sum = 0;
          for (int64_t t = start; t < end; ++t) sum += row[t];
          db[d * n + i] = sum / count;
        }
      }
    }
  });
}

at::Tensor interp_accumulate_cpu(at::Tensor f_hat, const at::Tensor& codebook,
                                 const at::Tensor& idx, const at::Tensor& weight,
                                 const at::Tensor& bias, double alpha, int64_t next_size) {
  TORCH_CHECK(f_hat.dim() == 3 && f_hat.is_contiguous(), "f_hat must be a contiguous (B, D, L) tensor");
  const int64_t B = f_hat.size(0), D = f_hat.size(1), L = f_hat.size(2);
  TORCH_CHECK(codebook.dim() == 2 && codebook.size(1) == D, "codebook must be (V, ", D, ")");
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == B && idx.size(1) >= 1 && idx.size(1) <= L,
              "idx must be (", B, ", s) with 1 <= s <= ", L);
  TORCH_CHECK(idx.scalar_type() == at::kLong, "idx must be int64");
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({D, D, 3}) && bias.sizes() == at::IntArrayRef({D}),
              "weight must be (D, D, 3) and bias (D,) with D = ", D);
  TORCH_CHECK(next_size >= 0 && next_size <= L, "next_size must be in [0, ", L, "]");
  for (const auto& t : {codebook, weight, bias})
    TORCH_CHECK(t.scalar_type() == f_hat.scalar_type(), "all float tensors must share f_hat's dtype");
  const int64_t V = codebook.size(0);
  auto ids = idx.contiguous();
  const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < V, "idx holds codes outside [0, ", V, "): ", lo, "..", hi);
  auto cb = codebook.contiguous();
  auto wt = weight.permute({2, 1, 0}).contiguous();  // (3, D_in, D_out)
  auto bs = bias.contiguous();
  auto down = at::empty({B, D, next_size}, f_hat.options());
  AT_DISPATCH_FLOATING_TYPES(f_hat.scalar_type(), "interp_accumulate_cpu", [&] {
    // widest channel block that divides D: 16 / 8 / 4 / 1 output channels per register tile
    auto kernel = D % 16 == 0 ? interp_accumulate_kernel<scalar_t, 16>
                  : D % 8 == 0 ? interp_accumulate_kernel<scalar_t, 8>
                  : D % 4 == 0 ? interp_accumulate_kernel<scalar_t, 4>
                               : interp_accumulate_kernel<scalar_t, 1>;
    kernel(f_hat.data_ptr<scalar_t>(), cb.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(),
           wt.data_ptr<scalar_t>(), bs.data_ptr<scalar_t>(), static_cast<scalar_t>(alpha), B, D,
           L, ids.size(1), down.data_ptr<scalar_t>(), next_size);
  });
  return down;
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CPU, m) { m.impl("interp_accumulate", &interp_accumulate_cpu); }
