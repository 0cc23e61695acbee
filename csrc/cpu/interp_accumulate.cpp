// CPU: f_hat += phi(linear_up(codebook[idx])), then the area-down input of the next scale.
//
// phi(h) = (1 - a) h + a (conv3(h) + bias) is linear in h, and every up-interpolated position is
// a blend of two codebook rows, so the conv never has to run per window: once per call we tabulate
// table[v] = ((1 - a) e_v, a W_0 e_v, a W_1 e_v, a W_2 e_v) for the V codes (3 V D^2
// multiply-adds), and each output position of each window becomes a sum of at most eight
// contiguous D-vectors of that table, weighted by the interpolation weights (8 D instead of
// 3 D^2 + D multiply-adds). One window per task (at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace {

// Half-pixel linear interpolation from s to L positions, as ATen's linear (align_corners=False):
// position t blends source i0[t] (weight l0[t]) and i1[t] (weight l1[t]).
template <typename T>
struct LinearUp {
  std::vector<int64_t> i0, i1;
  std::vector<T> l0, l1;
  LinearUp(int64_t s, int64_t L) : i0(L), i1(L), l0(L), l1(L) {
    const T scale = static_cast<T>(s) / static_cast<T>(L);
    for (int64_t t = 0; t < L; ++t) {
      T src = scale * (static_cast<T>(t) + T(0.5)) - T(0.5);
      if (src < 0) src = 0;
      i0[t] = static_cast<int64_t>(src);
      i1[t] = i0[t] + (i0[t] < s - 1 ? 1 : 0);
      l1[t] = src - static_cast<T>(i0[t]);
      l0[t] = T(1) - l1[t];
    }
  }
};

// table (V, 4, D): row 0 = keep * e_v, row 1 + j = alpha * W_j e_v for the conv's tap j, where
// wt is the conv weight as (3, D_in, D_out) (the inner loop runs over contiguous D_out).
template <typename T>
std::vector<T> code_table(const T* codebook, const T* wt, T alpha, T keep, int64_t V, int64_t D) {
  std::vector<T> table(V * 4 * D, T(0));
  at::parallel_for(0, V, 16, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const T* e = codebook + v * D;
      T* row = table.data() + v * 4 * D;
      for (int64_t d = 0; d < D; ++d) row[d] = keep * e[d];
      for (int64_t j = 0; j < 3; ++j) {
        T* out = row + (1 + j) * D;
        for (int64_t ci = 0; ci < D; ++ci) {
          const T x = alpha * e[ci];
          const T* w = wt + (j * D + ci) * D;
          for (int64_t co = 0; co < D; ++co) out[co] += x * w[co];
        }
      }
    }
  });
  return table;
}

// acc += l0 * table[c0][row] + l1 * table[c1][row]; DC is D when known at compile time (then
// the loop is fully unrolled into vector registers), 0 otherwise
template <typename T, int DC>
inline void add_blend(T* __restrict acc, const T* __restrict table, int64_t c0, int64_t c1, T l0,
                      T l1, int64_t row, int64_t D) {
  const int64_t n = DC > 0 ? DC : D;
  const T* __restrict r0 = table + (c0 * 4 + row) * n;
  const T* __restrict r1 = table + (c1 * 4 + row) * n;
  for (int64_t d = 0; d < n; ++d) acc[d] += l0 * r0[d] + l1 * r1[d];
}

template <typename T, int DC>
void interp_accumulate_kernel(T* f_hat, const T* table, const T* bias, const int64_t* idx, T alpha,
                              int64_t B, int64_t D, int64_t L, int64_t s, T* down, int64_t n) {
  const LinearUp<T> up(s, L);
  std::vector<T> abias(D);
  for (int64_t d = 0; d < D; ++d) abias[d] = alpha * bias[d];
  // area-down windows [start, end) of the next scale's n positions, as adaptive average pooling
  std::vector<int64_t> start(n), end(n);
  std::vector<T> inv_count(n);
  for (int64_t i = 0; i < n; ++i) {
    start[i] = (i * L) / n, end[i] = ((i + 1) * L + n - 1) / n;
    inv_count[i] = T(1) / static_cast<T>(end[i] - start[i]);
  }
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<T> acc_(D), win_(L * D);
    T* __restrict acc = acc_.data();
    T* __restrict win = win_.data();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t* ib = idx + b * s;
      T* fb = f_hat + b * D * L;
      for (int64_t t = 0; t < L; ++t) {
        for (int64_t d = 0; d < D; ++d) acc[d] = abias[d];
        add_blend<T, DC>(acc, table, ib[up.i0[t]], ib[up.i1[t]], up.l0[t], up.l1[t], 0, D);
        // conv tap j reads position t + j - 1 (zero padding outside [0, L))
        for (int64_t j = 0; j < 3; ++j) {
          const int64_t p = t + j - 1;
          if (p < 0 || p >= L) continue;
          add_blend<T, DC>(acc, table, ib[up.i0[p]], ib[up.i1[p]], up.l0[p], up.l1[p], 1 + j, D);
        }
        for (int64_t d = 0; d < D; ++d) fb[d * L + t] += acc[d];
      }
      if (n == 0) continue;
      // area down over the window as (L, D): sums over contiguous D-vectors (in the (D, L) layout
      // each output would be one serial chain of dependent scalar adds)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t t = 0; t < L; ++t) win[t * D + d] = fb[d * L + t];
      T* db = down + b * D * n;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t d = 0; d < D; ++d) acc[d] = 0;
        for (int64_t t = start[i]; t < end[i]; ++t)
          for (int64_t d = 0; d < D; ++d) acc[d] += win[t * D + d];
        for (int64_t d = 0; d < D; ++d) db[d * n + i] = acc[d] * inv_count[i];
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
    const auto a = static_cast<scalar_t>(alpha);
    const auto keep = static_cast<scalar_t>(1.0 - alpha);
    const auto table = code_table(cb.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), a, keep, V, D);
    // the code widths of the presets get a compile-time D
    auto kernel = D == 16 ? interp_accumulate_kernel<scalar_t, 16>
                  : D == 32 ? interp_accumulate_kernel<scalar_t, 32>
                  : D == 64 ? interp_accumulate_kernel<scalar_t, 64>
                            : interp_accumulate_kernel<scalar_t, 0>;
    kernel(f_hat.data_ptr<scalar_t>(), table.data(), bs.data_ptr<scalar_t>(),
           ids.data_ptr<int64_t>(), a, B, D, L, ids.size(1), down.data_ptr<scalar_t>(), next_size);
  });
  return down;
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CPU, m) { m.impl("interp_accumulate", &interp_accumulate_cpu); }
