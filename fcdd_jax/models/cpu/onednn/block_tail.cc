// The elementwise tail of a fused conv block (fcdd_jax.models.cpu.fused_block) as XLA FFI custom calls: BatchNorm
// (batch or given statistics) -> rounding to the compute dtype -> activation -> non-overlapping k x k max pool,
// forward and backward, on NHWC float32 or bfloat16 activations, threaded with OpenMP (the threads of oneDNN's
// convolutions: the calls run on the extension's own thread, runtime.h).
//
//   fcdd_block_tail_fwd (z [N,H,W,C], mean [C], var [C], scale [C]|[0], bias [C]|[0], mask [N]|[0])
//                       -> y [N,H/k,W/k,C] (z's dtype), batch_mean [C], batch_var [C] (float32)
//   fcdd_block_tail_bwd (z, gy [N,H/k,W/k,C], mean [C], var [C], scale, bias, mask)
//                       -> dz [N,H,W,C] (z's dtype), dscale [C]|[0], dbias [C]|[0], db [C] (float32)
//
// Attributes: bn (0 none, 1 batch statistics, 2 the given mean/var), act (0 none, 1 relu, 2 leaky), slope, eps,
// pool (k; 0 or 1: no pool). The numerics are fused_block's (`_block_forward` and its VJP; see there): BN in
// float32, the result rounded to the compute dtype, a leaky product rounded again, the pool's gradient to the
// first maximum of each window (row-major), an activation at exactly 0 taking the negative side's slope, dz in
// the compute dtype (round to nearest even). Batch statistics: the biased variance, from sums of z - K (K the
// first counted image's channel mean) accumulated in double; mask [N] counts only the rows with mask > 0.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t RoundBits(uint32_t u) {  // float32 bits rounded to bfloat16's (nearest even); NaN stays NaN (quiet)
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t q = (u | 0x00400000u) & 0xffff0000u;
  return (u & 0x7fffffffu) > 0x7f800000u ? q : r;
}
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t(RoundBits(u) >> 16);
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) { p[i] = ToBf16(v); }
template <typename T>
inline float RoundTo(float v) {  // v rounded to T's precision (float: v)
  if (sizeof(T) == 4) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = RoundBits(u);
  std::memcpy(&v, &u, 4);
  return v;
}

struct Tail {
  int64_t n, h, w, c, k, ho, wo;
  int64_t bn, act;
  float slope, slope_c;        // the leaky slope; as the compute dtype holds it (the forward's product)
  const float *mean, *inv, *scale, *bias;  // [C] each (scale 1 and bias 0 without BN affine)
  const float* mask;           // [N] or null
  double count;                // positions the batch statistics average over
};

struct Scratch {  // per thread, [C] each
  explicit Scratch(int64_t c) : best(c), zat(c), ga(c), idx(c) {}
  std::vector<float> best, zat, ga;
  std::vector<int32_t> idx;
};

namespace isa_avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#include "block_tail_rows.inc"
#pragma GCC pop_options
}  // namespace isa_avx512

namespace isa_avx2 {  // CPUs without AVX-512 (AVX2-only laptops, AMD Zen 3): the baseline ISA is SSE2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "block_tail_rows.inc"
#pragma GCC pop_options
}  // namespace isa_avx2

namespace isa_base {
#include "block_tail_rows.inc"
}  // namespace isa_base

// 2: AVX-512, 1: AVX2 + FMA, 0: the baseline.
int Isa() {
  static const int isa = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) ? 2
                         : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
  return isa;
}

// Calls the row function of the CPU's ISA (the same source compiled for each, block_tail_rows.inc).
#define TAIL_ISA_CALL(isa, ...)                  \
  do {                                           \
    if ((isa) == 2) isa_avx512::__VA_ARGS__;     \
    else if ((isa) == 1) isa_avx2::__VA_ARGS__;  \
    else isa_base::__VA_ARGS__;                  \
  } while (0)

// f(bn, act) with both as compile-time constants (std::integral_constant).
template <typename F>
void WithModes(int64_t bn, int64_t act, F&& f) {
  auto with_act = [&](auto b) {
    if (act == 1) f(b, std::integral_constant<int, 1>());
    else if (act == 2) f(b, std::integral_constant<int, 2>());
    else f(b, std::integral_constant<int, 0>());
  };
  if (bn == 1) with_act(std::integral_constant<int, 1>());
  else if (bn == 2) with_act(std::integral_constant<int, 2>());
  else with_act(std::integral_constant<int, 0>());
}

// Per-channel sums over rows (OpenMP), each row's float32 partials added in double: row(r, s, a1, a2).
template <typename Row>
void RowSums(const Tail& t, Row&& row, std::vector<double>* s1, std::vector<double>* s2) {
  const int nthr = omp_get_max_threads();
  std::vector<double> p1(nthr * t.c, 0.0), p2(nthr * t.c, 0.0);
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    Scratch s(t.c);
    std::vector<float> a1(t.c), a2(t.c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < t.n; ++r) {
      std::fill(a1.begin(), a1.end(), 0.0f);
      std::fill(a2.begin(), a2.end(), 0.0f);
      if (!row(r, &s, a1.data(), a2.data())) continue;
      for (int64_t c = 0; c < t.c; ++c) {
        p1[tid * t.c + c] += a1[c];
        p2[tid * t.c + c] += a2[c];
      }
    }
  }
  s1->assign(t.c, 0.0);
  s2->assign(t.c, 0.0);
  for (int i = 0; i < nthr; ++i) {
    for (int64_t c = 0; c < t.c; ++c) {
      (*s1)[c] += p1[i * t.c + c];
      (*s2)[c] += p2[i * t.c + c];
    }
  }
}

template <typename Row>
void Rows(const Tail& t, Row&& row) {
#pragma omp parallel
  {
    Scratch s(t.c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < t.n; ++r) row(r, &s);
  }
}

// Batch mean and biased variance per channel: shifted sums (K: the first counted row's channel mean).
template <typename T>
void BatchStats(const Tail& t, const T* z, float* mean, float* var) {
  int64_t first = 0;
  if (t.mask) {  // the first counted row (row 0 when none is)
    while (first < t.n && !(t.mask[first] > 0)) ++first;
    if (first == t.n) first = 0;
  }
  const int64_t hw = t.h * t.w;
  std::vector<double> k(t.c, 0.0);
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t c = 0; c < t.c; ++c) k[c] += Load(z, (first * hw + p) * t.c + c);
  std::vector<float> shift(t.c);
  for (int64_t c = 0; c < t.c; ++c) shift[c] = float(k[c] / double(hw));
  const int isa = Isa();
  std::vector<double> s1, s2;
  RowSums(t, [&](int64_t r, Scratch*, float* a1, float* a2) {
    if (t.mask && !(t.mask[r] > 0)) return false;
    TAIL_ISA_CALL(isa, StatsRow(t, z, r, shift.data(), a1, a2));
    return true;
  }, &s1, &s2);
  for (int64_t c = 0; c < t.c; ++c) {
    const double m1 = s1[c] / t.count, m2 = s2[c] / t.count;
    mean[c] = float(shift[c] + m1);
    var[c] = float(std::max(m2 - m1 * m1, 0.0));
  }
}

struct Params {  // the per-call [C] arrays Tail points to
  std::vector<float> mean, inv, scale, bias;
};

ffi::Error Setup(const ffi::AnyBuffer& z, const ffi::AnyBuffer& scale, const ffi::AnyBuffer& bias,
                 const ffi::AnyBuffer& mask, int64_t bn, int64_t act, float slope, int64_t pool, Tail* t,
                 Params* p) {
  auto d = z.dimensions();
  if (d.size() != 4) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "fcdd_block_tail: z must be 4-D");
  t->n = d[0]; t->h = d[1]; t->w = d[2]; t->c = d[3];
  t->k = pool > 1 ? pool : 1;
  if (t->h % t->k || t->w % t->k) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "fcdd_block_tail: pool");
  t->ho = t->h / t->k; t->wo = t->w / t->k;
  t->bn = bn; t->act = act; t->slope = slope;
  t->slope_c = z.element_type() == ffi::DataType::BF16 ? RoundTo<uint16_t>(slope) : slope;
  p->mean.assign(t->c, 0.0f);
  p->inv.assign(t->c, 1.0f);
  p->scale.assign(t->c, 1.0f);
  p->bias.assign(t->c, 0.0f);
  if (scale.element_count()) std::memcpy(p->scale.data(), scale.untyped_data(), t->c * 4);
  if (bias.element_count()) std::memcpy(p->bias.data(), bias.untyped_data(), t->c * 4);
  t->mean = p->mean.data(); t->inv = p->inv.data(); t->scale = p->scale.data(); t->bias = p->bias.data();
  t->mask = mask.element_count() ? static_cast<const float*>(mask.untyped_data()) : nullptr;
  double rows = double(t->n);
  if (t->mask) {
    rows = 0;
    for (int64_t r = 0; r < t->n; ++r) rows += t->mask[r];
  }
  t->count = rows * double(t->h * t->w);
  return ffi::Error::Success();
}

// mean/var -> p->mean, p->inv (1 / sqrt(var + eps)).
void Normaliser(const float* mean, const float* var, float eps, const Tail& t, Params* p) {
  for (int64_t c = 0; c < t.c; ++c) {
    p->mean[c] = mean[c];
    p->inv[c] = 1.0f / std::sqrt(var[c] + eps);
  }
}

template <typename T>
void RunForward(const Tail& t, Params* p, float eps, const ffi::AnyBuffer& mean, const ffi::AnyBuffer& var,
                const T* z, T* y, float* mean_out, float* var_out) {
  if (t.bn == 1) {
    BatchStats(t, z, mean_out, var_out);
  } else {
    std::memcpy(mean_out, mean.untyped_data(), t.c * 4);
    std::memcpy(var_out, var.untyped_data(), t.c * 4);
  }
  if (t.bn) Normaliser(mean_out, var_out, eps, t, p);
  const int isa = Isa();
  WithModes(t.bn, t.act, [&](auto bn, auto act) {
    Rows(t, [&](int64_t r, Scratch* s) {
      TAIL_ISA_CALL(isa, ForwardRow<T, bn.value, act.value>(t, z, y, r, s));
    });
  });
}

ffi::Error TailFwdImpl(ffi::AnyBuffer z, ffi::AnyBuffer mean, ffi::AnyBuffer var, ffi::AnyBuffer scale,
                       ffi::AnyBuffer bias, ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Result<ffi::AnyBuffer> mean_out, ffi::Result<ffi::AnyBuffer> var_out, int64_t bn,
                       int64_t act, float slope, float eps, int64_t pool) {
  Tail t;
  Params p;
  if (auto e = Setup(z, scale, bias, mask, bn, act, slope, pool, &t, &p); e.failure()) return e;
  float* mo = static_cast<float*>(mean_out->untyped_data());
  float* vo = static_cast<float*>(var_out->untyped_data());
  if (t.n == 0) return ffi::Error::Success();
  return fcdd_onednn::Execute([&] {
    if (z.element_type() == ffi::DataType::BF16) {
      RunForward(t, &p, eps, mean, var, static_cast<const uint16_t*>(z.untyped_data()),
                 static_cast<uint16_t*>(y->untyped_data()), mo, vo);
    } else {
      RunForward(t, &p, eps, mean, var, static_cast<const float*>(z.untyped_data()),
                 static_cast<float*>(y->untyped_data()), mo, vo);
    }
  });
}

template <typename T>
void RunBackward(const Tail& t, Params* p, float eps, const ffi::AnyBuffer& mean, const ffi::AnyBuffer& var,
                 const T* z, const T* gy, T* dz, float* dscale, float* dbias, float* db) {
  if (t.bn) Normaliser(static_cast<const float*>(mean.untyped_data()), static_cast<const float*>(var.untyped_data()),
                       eps, t, p);
  const int isa = Isa();
  std::vector<double> dbeta, dgamma;
  std::vector<float> gain(t.c), dbeta_n(t.c), dgamma_n(t.c);
  WithModes(t.bn, t.act, [&](auto bn, auto act) {
    RowSums(t, [&](int64_t r, Scratch* s, float* a1, float* a2) {
      TAIL_ISA_CALL(isa, GradSumsRow<T, bn.value, act.value>(t, z, gy, r, s, a1, a2));
      return true;
    }, &dbeta, &dgamma);
    for (int64_t c = 0; c < t.c; ++c) {
      gain[c] = t.bn ? t.scale[c] * t.inv[c] : 1.0f;
      dbeta_n[c] = float(dbeta[c]) / float(t.count);
      dgamma_n[c] = float(dgamma[c]) / float(t.count);
      if (dscale) dscale[c] = float(dgamma[c]);
      if (dbias) dbias[c] = float(dbeta[c]);
      db[c] = t.bn == 1 ? 0.0f : gain[c] * float(dbeta[c]);  // batch statistics cancel the conv bias
    }
    Rows(t, [&](int64_t r, Scratch* s) {
      TAIL_ISA_CALL(isa, InputGradRow<T, bn.value, act.value>(t, z, gy, r, gain.data(), dbeta_n.data(),
                                                                 dgamma_n.data(), dz, s));
    });
  });
}

ffi::Error TailBwdImpl(ffi::AnyBuffer z, ffi::AnyBuffer gy, ffi::AnyBuffer mean, ffi::AnyBuffer var,
                       ffi::AnyBuffer scale, ffi::AnyBuffer bias, ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> dz,
                       ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dbias,
                       ffi::Result<ffi::AnyBuffer> db, int64_t bn, int64_t act, float slope, float eps, int64_t pool) {
  Tail t;
  Params p;
  if (auto e = Setup(z, scale, bias, mask, bn, act, slope, pool, &t, &p); e.failure()) return e;
  if (gy.element_type() != z.element_type()) return fcdd_onednn::Fail("block tail: gy and z must have one dtype");
  float* ds = dscale->element_count() ? static_cast<float*>(dscale->untyped_data()) : nullptr;
  float* dbi = dbias->element_count() ? static_cast<float*>(dbias->untyped_data()) : nullptr;
  float* dbo = static_cast<float*>(db->untyped_data());
  return fcdd_onednn::Execute([&] {
    if (z.element_type() == ffi::DataType::BF16) {
      RunBackward(t, &p, eps, mean, var, static_cast<const uint16_t*>(z.untyped_data()),
                  static_cast<const uint16_t*>(gy.untyped_data()), static_cast<uint16_t*>(dz->untyped_data()), ds,
                  dbi, dbo);
    } else {
      RunBackward(t, &p, eps, mean, var, static_cast<const float*>(z.untyped_data()),
                  static_cast<const float*>(gy.untyped_data()), static_cast<float*>(dz->untyped_data()), ds, dbi,
                  dbo);
    }
  });
}

}  // namespace

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcddBlockTailFwd, TailFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("bn").Attr<int64_t>("act").Attr<float>("slope")
                                  .Attr<float>("eps").Attr<int64_t>("pool"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcddBlockTailBwd, TailBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("bn").Attr<int64_t>("act").Attr<float>("slope")
                                  .Attr<float>("eps").Attr<int64_t>("pool"));

#pragma GCC visibility pop
