// CUDA registrations: shape checks here (host C++, no CUDA headers), math in cuda/kernels.cu.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <optional>

#include "kernels.h"

namespace {

void* current_stream(const at::Tensor& t) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle();
}

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, what, " failed: ", timemar_cuda_error_string(err));
}

at::Tensor interp_accumulate_cuda(at::Tensor f_hat, const at::Tensor& codebook,
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
  for (const auto& t : {codebook, idx, weight, bias})
    TORCH_CHECK(t.device() == f_hat.device(), "all tensors must be on ", f_hat.device());
  c10::DeviceGuard guard(f_hat.device());
  auto cb = codebook.contiguous(), ids = idx.contiguous(), w = weight.contiguous(),
       bs = bias.contiguous();
  auto down = at::empty({B, D, next_size}, f_hat.options());
  void* stream = current_stream(f_hat);
  if (f_hat.scalar_type() == at::kFloat) {
    check(timemar_interp_accumulate_f32(f_hat.data_ptr<float>(), cb.data_ptr<float>(),
                                        ids.data_ptr<int64_t>(), w.data_ptr<float>(),
                                        bs.data_ptr<float>(), static_cast<float>(alpha), B, D, L,
                                        ids.size(1), down.data_ptr<float>(), next_size, stream),
          "interp_accumulate");
  } else {
    TORCH_CHECK(f_hat.scalar_type() == at::kDouble, "interp_accumulate: float32 or float64 only");
    check(timemar_interp_accumulate_f64(f_hat.data_ptr<double>(), cb.data_ptr<double>(),
                                        ids.data_ptr<int64_t>(), w.data_ptr<double>(),
                                        bs.data_ptr<double>(), alpha, B, D, L, ids.size(1),
                                        down.data_ptr<double>(), next_size, stream),
          "interp_accumulate");
  }
  return down;
}

at::Tensor decode_epilogue_cuda(const at::Tensor& trend, const at::Tensor& coarse,
                                const at::Tensor& fine, const std::optional<at::Tensor>& span,
                                const std::optional<at::Tensor>& lo) {
  TORCH_CHECK(trend.dim() == 3, "components must be (B, C, T)");
  TORCH_CHECK(coarse.sizes() == trend.sizes() && fine.sizes() == trend.sizes(),
              "trend, coarse and fine must have the same shape");
  for (const auto& t : {trend, coarse, fine})
    TORCH_CHECK(t.scalar_type() == at::kFloat, "components must be float32");
  TORCH_CHECK(span.has_value() == lo.has_value(), "give both span and lo, or neither");
  const int64_t B = trend.size(0), C = trend.size(1), T = trend.size(2);
  c10::DeviceGuard guard(trend.device());
  at::Tensor sp, lw;
  if (span) {
    sp = span->to(trend.device(), at::kDouble).contiguous();
    lw = lo->to(trend.device(), at::kDouble).contiguous();
    TORCH_CHECK(sp.numel() == C && lw.numel() == C, "span and lo must hold C = ", C, " values");
  }
  auto a = trend.contiguous(), b = coarse.contiguous(), c = fine.contiguous();
  auto out = at::empty({B, T, C}, trend.options());
  check(timemar_decode_epilogue(a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(),
                                span ? sp.data_ptr<double>() : nullptr,
                                span ? lw.data_ptr<double>() : nullptr, B, C, T,
                                out.data_ptr<float>(), current_stream(trend)),
        "decode_epilogue");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(timemar, CUDA, m) {
  m.impl("interp_accumulate", &interp_accumulate_cuda);
  m.impl("decode_epilogue", &decode_epilogue_cuda);
}
