// oneDNN's convolutions as one XLA FFI custom call: forward, input gradient and kernel gradient of a 2-D
// convolution in the networks' own layouts (NHWC activations, HWIO kernels), without transposes.
//
// One handler, "resnet_jax_onednn_conv", three passes (attribute "pass"):
//   0  forward:        a = x  (N,H,W,Ci),   b = w  (KH,KW,Ci,Co) -> y  (N,Ho,Wo,Co)
//   1  input grad:     a = dy (N,Ho,Wo,Co), b = w  (KH,KW,Ci,Co) -> dx (N,H,W,Ci)
//   2  kernel grad:    a = x  (N,H,W,Ci),   b = dy (N,Ho,Wo,Co)  -> dw (KH,KW,Ci,Co)
// Both operands are fp32, or both bf16 (CPUs with AVX512-BF16 or AMX; ResnetJaxOnednnBf16 says whether oneDNN
// has fast bf16 convolutions here). Passes 0 and 1 return the operands' type; pass 2 always returns fp32 (oneDNN
// accumulates the kernel gradient in fp32 and keeps it there: the caller rounds it once, to the kernel's type).
// Activations are given to oneDNN as NHWC; the kernel takes whatever layout oneDNN's chosen implementation
// wants (a reorder of a few KB). Primitives are created once per shape and type and cached; each call brings
// its own scratchpad, so concurrent calls are safe.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Conv {
  dnnl::primitive prim;
  memory::desc kernel;         // the layout the primitive wants for the kernel (weights or their gradient)
  memory::desc user_kernel;    // HWIO
  bool reorder = false;
  dnnl::reorder to_prim, from_prim;
  memory::desc scratch;
  std::string impl;            // oneDNN's name for the implementation it chose
};

struct Shape {
  int64_t n, h, w, ci, co, kh, kw, ho, wo, sh, sw, pt, pb, pl, pr;
  memory::data_type dt;  // of the activations and the kernel (the kernel gradient is fp32)
};

std::shared_ptr<Conv> Make(int64_t pass, const Shape& s) {
  auto& eng = Engine();
  // the kernel's type as the pass holds it: its gradient (pass 2) in fp32, the kernel itself in the data's type
  const auto wt = pass == 2 ? memory::data_type::f32 : s.dt;
  memory::desc src({s.n, s.ci, s.h, s.w}, s.dt, tag::nhwc);
  memory::desc dst({s.n, s.co, s.ho, s.wo}, s.dt, tag::nhwc);
  memory::desc any_w({s.co, s.ci, s.kh, s.kw}, s.dt, tag::any);
  memory::desc any_dw({s.co, s.ci, s.kh, s.kw}, wt, tag::any);
  memory::dims strides{s.sh, s.sw}, pad_l{s.pt, s.pl}, pad_r{s.pb, s.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                       dnnl::algorithm::convolution_direct, src, any_w, dst,
                                                       strides, pad_l, pad_r, attr);
  auto c = std::make_shared<Conv>();
  c->user_kernel = memory::desc({s.co, s.ci, s.kh, s.kw}, wt, tag::hwio);
  if (pass == 0) {
    c->prim = dnnl::convolution_forward(fwd);
    c->kernel = fwd.weights_desc();
    c->scratch = fwd.scratchpad_desc();
    c->impl = fwd.impl_info_str();
  } else if (pass == 1) {
    auto bwd = dnnl::convolution_backward_data::primitive_desc(eng, dnnl::algorithm::convolution_direct, src, any_w,
                                                               dst, strides, pad_l, pad_r, fwd, attr);
    c->prim = dnnl::convolution_backward_data(bwd);
    c->kernel = bwd.weights_desc();
    c->scratch = bwd.scratchpad_desc();
    c->impl = bwd.impl_info_str();
  } else {
    auto bwd = dnnl::convolution_backward_weights::primitive_desc(eng, dnnl::algorithm::convolution_direct, src,
                                                                  any_dw, dst, strides, pad_l, pad_r, fwd, attr);
    c->prim = dnnl::convolution_backward_weights(bwd);
    c->kernel = bwd.diff_weights_desc();
    c->scratch = bwd.scratchpad_desc();
    c->impl = bwd.impl_info_str();
  }
  c->reorder = c->kernel != c->user_kernel;
  if (c->reorder) {
    if (pass == 2) {
      c->from_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, c->kernel, eng, c->user_kernel));
    } else {
      c->to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, c->user_kernel, eng, c->kernel));
    }
  }
  return c;
}

std::shared_ptr<Conv> Get(int64_t pass, const Shape& s) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<Conv>> cache;
  std::string key = std::to_string(pass) + "," + std::to_string(static_cast<int>(s.dt));
  for (int64_t v : {s.n, s.h, s.w, s.ci, s.co, s.kh, s.kw, s.ho, s.wo, s.sh, s.sw, s.pt, s.pb, s.pl, s.pr}) {
    key += "," + std::to_string(v);
  }
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto c = Make(pass, s);
  cache.emplace(key, c);
  return c;
}

ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t pass, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || od.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: rank-4 operands expected");
  }
  const auto type = a.element_type();
  if ((type != ffi::DataType::F32 && type != ffi::DataType::BF16) || b.element_type() != type) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: both operands fp32, or both bf16");
  }
  if (out->element_type() != (pass == 2 ? ffi::DataType::F32 : type)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn_conv: the result is the operands' type (passes 0, 1) or fp32 (pass 2)");
  }
  const auto dt = type == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
  Shape s{};
  if (pass == 0) {
    s = {ad[0], ad[1], ad[2], ad[3], bd[3], bd[0], bd[1], od[1], od[2], sh, sw, pt, pb, pl, pr, dt};
  } else if (pass == 1) {
    s = {ad[0], od[1], od[2], od[3], ad[3], bd[0], bd[1], ad[1], ad[2], sh, sw, pt, pb, pl, pr, dt};
  } else if (pass == 2) {
    s = {ad[0], ad[1], ad[2], ad[3], bd[3], od[0], od[1], bd[1], bd[2], sh, sw, pt, pb, pl, pr, dt};
  } else {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: pass must be 0, 1 or 2");
  }
  try {
    auto c = Get(pass, s);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    memory::desc src({s.n, s.ci, s.h, s.w}, s.dt, tag::nhwc);
    memory::desc dst({s.n, s.co, s.ho, s.wo}, s.dt, tag::nhwc);
    // uninitialised buffers: oneDNN writes them before it reads them
    std::unique_ptr<uint8_t[]> scratch(new uint8_t[c->scratch.get_size()]);
    std::unique_ptr<uint8_t[]> kernel_buf(c->reorder ? new uint8_t[c->kernel.get_size()] : nullptr);
    // the kernel (passes 0, 1: an input; pass 2: the result) as the user holds it, and as the primitive takes it
    memory user_kernel(c->user_kernel, eng, pass == 2 ? out->untyped_data() : b.untyped_data());
    memory kernel = c->reorder ? memory(c->kernel, eng, kernel_buf.get()) : user_kernel;
    if (c->reorder && pass != 2) c->to_prim.execute(stream, user_kernel, kernel);
    std::unordered_map<int, memory> args{{DNNL_ARG_SCRATCHPAD, memory(c->scratch, eng, scratch.get())}};
    if (pass == 0) {
      args.insert({{DNNL_ARG_SRC, memory(src, eng, a.untyped_data())}, {DNNL_ARG_WEIGHTS, kernel},
                   {DNNL_ARG_DST, memory(dst, eng, out->untyped_data())}});
    } else if (pass == 1) {
      args.insert({{DNNL_ARG_DIFF_DST, memory(dst, eng, a.untyped_data())}, {DNNL_ARG_WEIGHTS, kernel},
                   {DNNL_ARG_DIFF_SRC, memory(src, eng, out->untyped_data())}});
    } else {
      args.insert({{DNNL_ARG_SRC, memory(src, eng, a.untyped_data())},
                   {DNNL_ARG_DIFF_DST, memory(dst, eng, b.untyped_data())}, {DNNL_ARG_DIFF_WEIGHTS, kernel}});
    }
    c->prim.execute(stream, args);
    if (c->reorder && pass == 2) c->from_prim.execute(stream, kernel, user_kernel);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// Whether oneDNN has bf16 convolutions on this CPU, all three passes as Run creates them: 1 yes, 0 it has none
// (a CPU without AVX-512), 2 only its reference implementation (far slower than fp32).
extern "C" int ResnetJaxOnednnBf16() {
  const Shape s{2, 8, 8, 16, 16, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, memory::data_type::bf16};
  try {
    for (int64_t pass : {0, 1, 2}) {
      if (Get(pass, s)->impl.find("ref") != std::string::npos) return 2;
    }
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConv, Run,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pass")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pb")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("pr"));
