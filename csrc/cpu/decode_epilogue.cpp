// CPU: decoder components (B, C, T) -> clamped windows (B, T, C) float32, optionally in data units.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

namespace {

at::Tensor decode_epilogue_cpu(const at::Tensor& trend, const at::Tensor& coarse,
                               const at::Tensor& fine, const std::optional<at::Tensor>& span,
                               const std::optional<at::Tensor>& lo) {
  TORCH_CHECK(trend.dim() == 3, "components must be (B, C, T)");
  TORCH_CHECK(coarse.sizes() == trend.sizes() && fine.sizes() == trend.sizes(),
              "trend, coarse and fine must have the same shape");
  for (const auto& t : {trend, coarse, fine})
    TORCH_CHECK(t.scalar_type() == at::kFloat, "components must be float32");
  TORCH_CHECK(span.has_value() == lo.has_value(), "give both span and lo, or neither");
  const int64_t B = trend.size(0), C = trend.size(1), T = trend.size(2);
  at::Tensor sp, lw;
  if (span) {
    sp = span->to(at::kDouble).contiguous();
    lw = lo->to(at::kDouble).contiguous();
    TORCH_CHECK(sp.numel() == C && lw.numel() == C, "span and lo must hold C = ", C, " values");
  }
  // any strides: channel-major (B, C, T) from the Conv1d decoder, time-major from the
  // channels-last one (fast_decoder.py), read in place
  auto out = at::empty({B, T, C}, trend.options());
  const float *pa = trend.data_ptr<float>(), *pb = coarse.data_ptr<float>(),
              *pc = fine.data_ptr<float>();
  const auto sa = trend.strides(), sb = coarse.strides(), sc = fine.strides();
  const double* ps = span ? sp.data_ptr<double>() : nullptr;
  const double* pl = span ? lw.data_ptr<double>() : nullptr;
  float* po = out.data_ptr<float>();
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      float* o = po + bi * T * C;
      for (int64_t t = 0; t < T; ++t) {
        const float* ra = pa + bi * sa[0] + t * sa[2];
        const float* rb = pb + bi * sb[0] + t * sb[2];
        const float* rc = pc + bi * sc[0] + t * sc[2];
        for (int64_t ch = 0; ch < C; ++ch) {
          float x = (ra[ch * sa[1]] + rb[ch * sb[1]]) + rc[ch * sc[1]];
          x = x < -1.f ? -1.f : (x > 1.f ? 1.f : x);  // NaN passes through, as torch.clamp
          if (ps) {
            const float u = (x + 1.f) / 2.f;
            x = ps[ch] > 0 ? static_cast<float>(static_cast<double>(u) * ps[ch] + pl[ch])
                           : static_cast<float>(pl[ch]);
          }
          o[t * C + ch] = x;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CPU, m) { m.impl("decode_epilogue", &decode_epilogue_cpu); }
