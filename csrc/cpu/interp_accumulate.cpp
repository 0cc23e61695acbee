// CPU: f_hat += phi(linear_up(codebook[idx])), then the area-down input of the next scale.
// One window per task (at::parallel_for); time-major scratch so every inner loop runs over the
// D contiguous channels and vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

template <typename T>
void interp_accumulate_kernel(T* f_hat, const T* codebook, const int64_t* idx, const T* wt,
                              const T* bias, T alpha, int64_t B, int64_t D, int64_t L, int64_t s,
                              int64_t V, T* down, int64_t n) {
  const T keep = static_cast<T>(1.0 - static_cast<double>(alpha));
  const T scale = static_cast<T>(s) / static_cast<T>(L);  // half-pixel linear, as ATen
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<T> up((L + 2) * D), conv(D);  // up rows 0 and L + 1 are the zero padding
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
      std::fill(up.begin(), up.begin() + D, T(0));
      std::fill(up.end() - D, up.end(), T(0));
      T* fb = f_hat + b * D * L;
      for (int64_t t = 0; t < L; ++t) {
        for (int64_t co = 0; co < D; ++co) conv[co] = bias[co];
        for (int64_t j = 0; j < 3; ++j) {
          const T* u = up.data() + (t + j) * D;  // position t + j - 1, shifted by the padding row
          const T* w = wt + j * D * D;            // wt[j][ci][co]
          for (int64_t ci = 0; ci < D; ++ci) {
            const T x = u[ci];
            const T* wr = w + ci * D;
            for (int64_t co = 0; co < D; ++co) conv[co] += x * wr[co];
          }
        }
        const T* u = up.data() + (t + 1) * D;
        for (int64_t co = 0; co < D; ++co) fb[co * L + t] += u[co] * keep + conv[co] * alpha;
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
    interp_accumulate_kernel<scalar_t>(
        f_hat.data_ptr<scalar_t>(), cb.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(),
        wt.data_ptr<scalar_t>(), bs.data_ptr<scalar_t>(), static_cast<scalar_t>(alpha), B, D, L,
        ids.size(1), V, down.data_ptr<scalar_t>(), next_size);
  });
  return down;
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CPU, m) { m.impl("interp_accumulate", &interp_accumulate_cpu); }
