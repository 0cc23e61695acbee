// CPU: the int8 linear layers of the engine's transformer, around torch._int_mm (int8 x int8 ->
// int32): rows of activations to symmetric int8 with one scale per row (layer-normed first when
// given LayerNorm weights), and the int32 -> float32 epilogue with per-row activation scales,
// per-channel weight scales and the bias, written or added (the residual) in one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

constexpr int kLanes = 8;  // partial sums the compiler keeps in one vector register

void check_rows(const at::Tensor& t, at::ScalarType type, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == type, name, " must be a 2-D ", type, " tensor");
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) <= 1, name, " must have contiguous rows");
}

void check_vector(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == n && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, " must be a contiguous float32 vector of ", n, " values");
}

float row_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[k + l];
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; k < n; ++k) s += x[k];
  return s;
}

float row_sq_dev(const float* x, float mean, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = x[k + l] - mean;
      acc[l] += d * d;
    }
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; k < n; ++k) s += (x[k] - mean) * (x[k] - mean);
  return s;
}

float row_absmax(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float a = std::fabs(x[k + l]);
      acc[l] = acc[l] > a ? acc[l] : a;
    }
  float m = 0.f;
  for (int l = 0; l < kLanes; ++l) m = m > acc[l] ? m : acc[l];
  for (; k < n; ++k) m = std::max(m, std::fabs(x[k]));
  return m;
}

// q[i] = rint(y[i] * 127 / max|y|) in [-127, 127], scale[i] = max|y| / 127 (1 for an all-zero
// row), y = x or LayerNorm(x) (biased variance, as torch), computed in float32.
void quantize_rows_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps, at::Tensor q,
                       at::Tensor scale) {
  check_rows(x, at::kFloat, "x");
  check_rows(q, at::kChar, "q");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(q.size(0) == M && q.size(1) == K, "q must have x's shape");
  check_vector(scale, M, "scale");
  TORCH_CHECK(weight.has_value() == bias.has_value(), "give both LayerNorm weight and bias, or neither");
  if (weight) {
    check_vector(*weight, K, "weight");
    check_vector(*bias, K, "bias");
  }
  const float* w = weight ? weight->data_ptr<float>() : nullptr;
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  const float* px = x.data_ptr<float>();
  int8_t* pq = q.data_ptr<int8_t>();
  float* ps = scale.data_ptr<float>();
  const int64_t sx = x.stride(0), sq = q.stride(0);
  const float e = static_cast<float>(eps);
  at::parallel_for(0, M, 16, [&](int64_t i0, int64_t i1) {
    std::vector<float> normed(w ? K : 0);
    for (int64_t i = i0; i < i1; ++i) {
      const float* xi = px + i * sx;
      const float* y = xi;
      if (w) {
        const float mean = row_sum(xi, K) / K;
        const float r = 1.f / std::sqrt(row_sq_dev(xi, mean, K) / K + e);
        float* n = normed.data();
        for (int64_t k = 0; k < K; ++k) n[k] = (xi[k] - mean) * r * w[k] + b[k];
        y = n;
      }
      const float amax = row_absmax(y, K);
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int8_t* qi = pq + i * sq;
      for (int64_t k = 0; k < K; ++k) {
        const float v = std::rint(y[k] * inv);
        qi[k] = static_cast<int8_t>(v > 127.f ? 127.f : (v < -127.f ? -127.f : v));
      }
      ps[i] = amax > 0.f ? amax / 127.f : 1.f;
    }
  });
}

// out[i, j] = acc[i, j] * x_scale[i] * w_scale[j] + bias[j], or out[i, j] += that (accumulate).
void dequant_rows_cpu(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                      const at::Tensor& bias, at::Tensor out, bool accumulate) {
  check_rows(acc, at::kInt, "acc");
  check_rows(out, at::kFloat, "out");
  const int64_t M = acc.size(0), N = acc.size(1);
  TORCH_CHECK(out.size(0) == M && out.size(1) == N, "out must have acc's shape");
  check_vector(x_scale, M, "x_scale");
  check_vector(w_scale, N, "w_scale");
  check_vector(bias, N, "bias");
  const int32_t* pa = acc.data_ptr<int32_t>();
  const float *px = x_scale.data_ptr<float>(), *pw = w_scale.data_ptr<float>(),
              *pb = bias.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t sa = acc.stride(0), so = out.stride(0);
  at::parallel_for(0, M, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int32_t* a = pa + i * sa;
      float* o = po + i * so;
      const float s = px[i];
      if (accumulate) {
        for (int64_t j = 0; j < N; ++j) o[j] += static_cast<float>(a[j]) * s * pw[j] + pb[j];
      } else {
        for (int64_t j = 0; j < N; ++j) o[j] = static_cast<float>(a[j]) * s * pw[j] + pb[j];
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CPU, m) {
  m.impl("quantize_rows", &quantize_rows_cpu);
  m.impl("dequant_rows", &dequant_rows_cpu);
}
