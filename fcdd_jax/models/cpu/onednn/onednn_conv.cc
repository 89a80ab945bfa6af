// oneDNN convolutions as XLA FFI custom calls (fcdd_jax.models.cpu.onednn): stride-1 2-D convolutions in NHWC with HWIO
// float32 weights, float32 or bfloat16 activations (bfloat16 products accumulate in float32).
//
//   fcdd_onednn_conv_fwd         (x [N,H,W,Ci], w [k,k,Ci,Co] f32, b [Co] f32 or [0]) -> y [N,Ho,Wo,Co]
//   fcdd_onednn_conv_bwd_data    (dy [N,Ho,Wo,Co], w [k,k,Ci,Co] f32) -> dx [N,H,W,Ci]
//   fcdd_onednn_conv_bwd_weights (x [N,H,W,Ci], dy [N,Ho,Wo,Co]) -> dw [k,k,Ci,Co] f32
//
// Attribute `pad`: symmetric zero padding. Activations stay NHWC (no reorder); the weights enter as float32
// HWIO and are reordered (and rounded to bf16 for a bf16 conv) into the primitive's preferred blocked layout;
// the weight gradient is computed in the primitive's layout and reordered to float32 HWIO. The output dtypes
// are those of the result buffers (y / dx: f32 or bf16). Primitives (and the reorders) are cached per shape
// and dtype; calls run one at a time on the extension's own thread (runtime.h), with oneDNN's OpenMP threads.
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <unordered_map>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <omp.h>

#include "dnnl.hpp"
#include "runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using fcdd_onednn::Execute;
using fcdd_onednn::Fail;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  switch (t) {
    case ffi::DataType::F32: *out = memory::data_type::f32; return true;
    case ffi::DataType::BF16: *out = memory::data_type::bf16; return true;
    default: return false;
  }
}

struct Geometry {
  int64_t n, h, w, ci, co, k, pad, ho, wo;
  memory::data_type src_dt, dst_dt;  // activations in / out (bwd_data: diff_dst / diff_src; bwd_w: src / diff_dst)
  bool bias = false;
  int threads = 0;  // OpenMP threads the primitive is made for and runs on (0: all)
  std::string Key(const char* kind) const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s:%ld,%ld,%ld,%ld,%ld,%ld,%ld:%d,%d,%d,%d", kind, (long)n, (long)h, (long)w,
                  (long)ci, (long)co, (long)k, (long)pad, (int)src_dt, (int)dst_dt, (int)bias, threads);
    return buf;
  }
  memory::dims Src() const { return {n, ci, h, w}; }
  memory::dims Dst() const { return {n, co, ho, wo}; }
  memory::dims Wei() const { return {co, ci, k, k}; }
  memory::dims Strides() const { return {1, 1}; }
  memory::dims Pads() const { return {pad, pad}; }
};

// The weights' compute dtype: that of the activations (bf16 conv: bf16 weights).
dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g, memory::data_type dst_dt, bool bias) {
  auto& eng = Engine();
  memory::desc src(g.Src(), g.src_dt, tag::nhwc);
  memory::desc wei(g.Wei(), g.src_dt, tag::any);
  memory::desc dst(g.Dst(), dst_dt, tag::nhwc);
  if (bias) {
    memory::desc b({g.co}, memory::data_type::f32, tag::a);
    return dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::convolution_direct, src, wei, b, dst,
                                                     g.Strides(), g.Pads(), g.Pads());
  }
  return dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                   dnnl::algorithm::convolution_direct, src, wei, dst, g.Strides(),
                                                   g.Pads(), g.Pads());
}

struct Entry {
  dnnl::primitive prim;
  memory::desc src, wei, dst;     // the primitive's descs (wei: its preferred layout)
  memory::desc user_wei;          // float32 HWIO
  bool wei_reorder = false;
  dnnl::reorder reorder;          // user HWIO f32 <-> primitive layout
  std::vector<char> wei_buf;      // weights (fwd, bwd_data) or weight gradient (bwd_weights) in that layout
  std::string impl;
};

std::map<std::string, std::unique_ptr<Entry>>& Cache() {
  static std::map<std::string, std::unique_ptr<Entry>> cache;
  return cache;
}

bool Verbose() {
  static bool v = std::getenv("FCDD_ONEDNN_VERBOSE") != nullptr;
  return v;
}

void Finish(Entry* e, const memory::desc& prim_wei, bool to_user, const std::string& key) {
  auto& eng = Engine();
  e->wei = prim_wei;
  e->wei_reorder = prim_wei != e->user_wei;
  if (e->wei_reorder) {
    e->wei_buf.resize(prim_wei.get_size());
    e->reorder = to_user ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim_wei, eng, e->user_wei))
                         : dnnl::reorder(dnnl::reorder::primitive_desc(eng, e->user_wei, eng, prim_wei));
  }
  if (Verbose()) std::fprintf(stderr, "fcdd_onednn: %s -> %s\n", key.c_str(), e->impl.c_str());
}

// The cached primitive of kind `kind` for g, built by make(entry) (which sets prim, src, dst, impl and returns the
// primitive's weights / weight-gradient desc) on first use.
template <typename Make>
Entry* Get(const char* kind, const Geometry& g, bool wei_to_user, Make make) {
  std::string key = g.Key(kind);
  auto& c = Cache();
  auto it = c.find(key);
  if (it != c.end()) return it->second.get();
  auto e = std::make_unique<Entry>();
  e->user_wei = memory::desc(g.Wei(), memory::data_type::f32, tag::hwio);
  memory::desc prim_wei = make(e.get());
  Finish(e.get(), prim_wei, wei_to_user, key);
  return (c[key] = std::move(e)).get();
}

Entry* GetFwd(const Geometry& g) {
  return Get("fwd", g, false, [&](Entry* e) {
    auto pd = FwdPd(g, g.dst_dt, g.bias);
    e->prim = dnnl::convolution_forward(pd);
    e->src = pd.src_desc();
    e->dst = pd.dst_desc();
    e->impl = pd.impl_info_str();
    return pd.weights_desc();
  });
}

Entry* GetBwdData(const Geometry& g) {
  // g.src_dt: diff_dst's dtype (the compute dtype), g.dst_dt: diff_src's
  return Get("bwd_data", g, false, [&](Entry* e) {
    memory::desc diff_src(g.Src(), g.dst_dt, tag::nhwc);
    memory::desc wei(g.Wei(), g.src_dt, tag::any);
    memory::desc diff_dst(g.Dst(), g.src_dt, tag::nhwc);
    auto pd = dnnl::convolution_backward_data::primitive_desc(Engine(), dnnl::algorithm::convolution_direct, diff_src,
                                                              wei, diff_dst, g.Strides(), g.Pads(), g.Pads(),
                                                              FwdPd(g, g.src_dt, false));
    e->prim = dnnl::convolution_backward_data(pd);
    e->src = pd.diff_src_desc();
    e->dst = pd.diff_dst_desc();
    e->impl = pd.impl_info_str();
    return pd.weights_desc();
  });
}

Entry* GetBwdWeights(const Geometry& g) {
  return Get("bwd_weights", g, true, [&](Entry* e) {
    memory::desc src(g.Src(), g.src_dt, tag::nhwc);
    memory::desc diff_wei(g.Wei(), memory::data_type::f32, tag::any);
    memory::desc diff_dst(g.Dst(), g.src_dt, tag::nhwc);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(Engine(), dnnl::algorithm::convolution_direct, src,
                                                                 diff_wei, diff_dst, g.Strides(), g.Pads(), g.Pads(),
                                                                 FwdPd(g, g.src_dt, false));
    e->prim = dnnl::convolution_backward_weights(pd);
    e->src = pd.src_desc();
    e->dst = pd.diff_dst_desc();
    e->impl = pd.impl_info_str();
    return pd.diff_weights_desc();
  });
}

ffi::Error CheckRank(const ffi::AnyBuffer& b, size_t rank, const char* what) {
  if (b.dimensions().size() != rank) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("fcdd_onednn: bad rank of ") + what);
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwdImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
                       int64_t pad) {
  if (auto e = CheckRank(x, 4, "x"); e.failure()) return e;
  if (auto e = CheckRank(w, 4, "w"); e.failure()) return e;
  if (w.element_type() != ffi::DataType::F32) return Fail("weights must be float32");
  Geometry g;
  auto xd = x.dimensions(), wd = w.dimensions();
  g.n = xd[0]; g.h = xd[1]; g.w = xd[2]; g.ci = xd[3];
  g.k = wd[0]; g.co = wd[3]; g.pad = pad;
  g.ho = g.h + 2 * pad - g.k + 1; g.wo = g.w + 2 * pad - g.k + 1;
  g.bias = b.element_count() > 0;
  if (!ToDnnl(x.element_type(), &g.src_dt) || !ToDnnl(y->element_type(), &g.dst_dt)) return Fail("dtype");
  if (g.n == 0) return ffi::Error::Success();
  return Execute([&] {
    Entry* e = GetFwd(g);
    auto& eng = Engine();
    dnnl::stream s(eng);
    memory xm(e->src, eng, x.untyped_data());
    memory ym(e->dst, eng, y->untyped_data());
    memory wu(e->user_wei, eng, w.untyped_data());
    memory wm = wu;
    if (e->wei_reorder) {
      wm = memory(e->wei, eng, e->wei_buf.data());
      e->reorder.execute(s, wu, wm);
    }
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
    if (g.bias) args[DNNL_ARG_BIAS] = memory(memory::desc({g.co}, memory::data_type::f32, tag::a), eng,
                                             b.untyped_data());
    e->prim.execute(s, args);
    s.wait();
  });
}

ffi::Error ConvBwdDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t pad) {
  if (auto e = CheckRank(dy, 4, "dy"); e.failure()) return e;
  if (auto e = CheckRank(w, 4, "w"); e.failure()) return e;
  if (w.element_type() != ffi::DataType::F32) return Fail("weights must be float32");
  Geometry g;
  auto dxd = dx->dimensions(), wd = w.dimensions(), dyd = dy.dimensions();
  g.n = dxd[0]; g.h = dxd[1]; g.w = dxd[2]; g.ci = dxd[3];
  g.k = wd[0]; g.co = wd[3]; g.pad = pad;
  g.ho = dyd[1]; g.wo = dyd[2];
  if (!ToDnnl(dy.element_type(), &g.src_dt) || !ToDnnl(dx->element_type(), &g.dst_dt)) return Fail("dtype");
  if (g.n == 0) return ffi::Error::Success();
  return Execute([&] {
    Entry* e = GetBwdData(g);
    auto& eng = Engine();
    dnnl::stream s(eng);
    memory dym(e->dst, eng, dy.untyped_data());
    memory dxm(e->src, eng, dx->untyped_data());
    memory wu(e->user_wei, eng, w.untyped_data());
    memory wm = wu;
    if (e->wei_reorder) {
      wm = memory(e->wei, eng, e->wei_buf.data());
      e->reorder.execute(s, wu, wm);
    }
    e->prim.execute(s, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm}});
    s.wait();
  });
}

ffi::Error ConvBwdWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw, int64_t pad) {
  if (auto e = CheckRank(x, 4, "x"); e.failure()) return e;
  if (auto e = CheckRank(dy, 4, "dy"); e.failure()) return e;
  if (dw->element_type() != ffi::DataType::F32) return Fail("weight gradient must be float32");
  Geometry g;
  auto xd = x.dimensions(), wd = dw->dimensions(), dyd = dy.dimensions();
  g.n = xd[0]; g.h = xd[1]; g.w = xd[2]; g.ci = xd[3];
  g.k = wd[0]; g.co = wd[3]; g.pad = pad;
  g.ho = dyd[1]; g.wo = dyd[2];
  if (!ToDnnl(x.element_type(), &g.src_dt)) return Fail("dtype");
  if (dy.element_type() != x.element_type()) return Fail("x and dy must have one dtype");
  g.dst_dt = memory::data_type::f32;
  // A first layer's weight gradient (1-4 input channels) on one thread: oneDNN 3.2's 2-thread kernels for it
  // (jit_bf16 / jit:avx512_core, minibatch split + reduction) were slower in every measurement on the 2-core AMD EPYC
  // (bf16 3x3 3->128 at 32^2, batch 128: 52-1300 ms vs 16-36 ms on one thread, the 2-thread one stalling under load).
  g.threads = g.ci <= 4 ? 1 : 0;
  if (g.n == 0) {
    std::fill_n(static_cast<float*>(dw->untyped_data()), dw->element_count(), 0.0f);
    return ffi::Error::Success();
  }
  return Execute([&] {
    const int saved = omp_get_max_threads();
    if (g.threads) omp_set_num_threads(g.threads);  // this thread's setting only: the primitive is made and run on it
    Entry* e = GetBwdWeights(g);
    auto& eng = Engine();
    dnnl::stream s(eng);
    memory xm(e->src, eng, x.untyped_data());
    memory dym(e->dst, eng, dy.untyped_data());
    memory wu(e->user_wei, eng, dw->untyped_data());
    memory wm = e->wei_reorder ? memory(e->wei, eng, e->wei_buf.data()) : wu;
    e->prim.execute(s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, wm}});
    if (e->wei_reorder) e->reorder.execute(s, wm, wu);
    s.wait();
    if (g.threads) omp_set_num_threads(saved);
  });
}

}  // namespace

#pragma GCC visibility push(default)  // the handlers are looked up by name (ctypes)

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcddOnednnConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcddOnednnConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcddOnednnConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad"));

// For the Python side: the oneDNN version this was built against and the ISA it runs at.
extern "C" const char* fcdd_onednn_info() {
  static std::string info;
  if (info.empty()) {
    const dnnl_version_t* v = dnnl_version();
    char buf[128];
    std::snprintf(buf, sizeof buf, "oneDNN %d.%d.%d (cpu isa %d)", v->major, v->minor, v->patch,
                  (int)dnnl::get_effective_cpu_isa());
    info = buf;
  }
  return info.c_str();
}

// 1 when oneDNN has every convolution the custom calls create (forward with bias, output in the activations'
// dtype and in float32; backward data; backward weights) for activations in bfloat16 (bf16 = 1) or float32
// (bf16 = 0) on this CPU, else 0. oneDNN has no bfloat16 convolutions on CPUs without AVX-512 (e.g. AVX2-only
// laptops and AMD Zen 3): the Python side then leaves bfloat16 convolutions to XLA instead of failing.
extern "C" int fcdd_onednn_supports(int bf16) {
  const memory::data_type dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  Geometry g{4, 8, 8, 16, 16, 3, 1, 8, 8, dt, dt};
  try {
    auto& eng = Engine();
    FwdPd(g, dt, true);
    FwdPd(g, memory::data_type::f32, true);
    memory::desc x(g.Src(), dt, tag::nhwc), wei(g.Wei(), dt, tag::any), y(g.Dst(), dt, tag::nhwc);
    dnnl::convolution_backward_data::primitive_desc(eng, dnnl::algorithm::convolution_direct, x, wei, y,
                                                     g.Strides(), g.Pads(), g.Pads(), FwdPd(g, dt, false));
    memory::desc dw(g.Wei(), memory::data_type::f32, tag::any);
    dnnl::convolution_backward_weights::primitive_desc(eng, dnnl::algorithm::convolution_direct, x, dw, y,
                                                       g.Strides(), g.Pads(), g.Pads(), FwdPd(g, dt, false));
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

// 1: the custom calls run on the extension's own thread (default); 0: on XLA's calling thread. For A/B benchmarks.
extern "C" void fcdd_onednn_set_thread_mode(int mode) { fcdd_onednn::ThreadMode() = mode; }

#pragma GCC visibility pop
