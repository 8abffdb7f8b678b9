// The CPU kernel of the fused tanh forms: y = gamma * tanh(c (alpha x + s)) + beta and its backward.
//
// Usage (from Python; built by normfree_bench.core.fused.cpu_kernel):
//   y, t = kernel.forward(x, alpha, shift, weight, bias, c, save_tanh)
//   dx, dalpha, dgamma, dbeta, dshift = kernel.backward(dy, x, t, alpha, shift, weight, c)
//
// x and dy: contiguous fp32 (rows, channels); alpha and shift: 1-element fp32 (shift may be empty, read as 0);
// weight: fp32 (channels,); bias: fp32 (channels,) or empty (read as 0). c is 1 for DyT and 1/2 for the centred
// sigmoid (2 sigmoid(u) - 1 = tanh(u / 2)). t is tanh(c (alpha x + s)) when the forward saved it (the backward
// then needs no tanh), else an empty tensor and the backward recomputes it.
//
// tanh is the rational minimax approximation that Eigen and XLA use for float tanh (odd degree-13 numerator,
// even degree-6 denominator, clamped to +-7.905; Eigen's generic_fast_tanh_float,
// https://gitlab.com/libeigen/eigen/-/blob/master/Eigen/src/Core/MathFunctionsImpl.h), evaluated 16 lanes at a
// time with GCC's vector extensions; where AVX-512 is compiled in, the one division is a 14-bit reciprocal
// estimate refined by one Newton step (about 2^-28 relative), else a true division. NaN propagates (the clamp
// keeps a NaN), and +-inf gives +-1 within 3e-7.
//
// Rows are split into at most CHUNKS fixed chunks; each chunk sums its dalpha, ds, dgamma and dbeta, and the
// chunk sums are added in chunk order, so the parameter gradients do not depend on the thread count. A row's
// tail (channels % 16) goes through a zero-padded 16-lane buffer, so every element takes the same arithmetic.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LANES = 16;
constexpr int64_t CHUNKS = 64;
typedef float vf __attribute__((vector_size(64)));

constexpr float CLAMP = 7.90531110763549805f;
constexpr float NUM[7] = {4.89352455891786e-03f, 6.37261928875436e-04f, 1.48572235717979e-05f,
                          5.12229709037114e-08f, -8.60467152213735e-11f, 2.00018790482477e-13f,
                          -2.76076847742355e-16f};
constexpr float DEN[4] = {4.89352518554385e-03f, 2.26843463243900e-03f, 1.18534705686654e-04f,
                          1.19825839466702e-06f};

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

inline vf splat(float s) { return vf{} + s; }

inline vf reciprocal(vf d) {
#if defined(__AVX512F__)
  vf r = (vf)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}

// u clamped to [-CLAMP, CLAMP]; a NaN stays NaN.
inline vf clamp(vf u) {
#if defined(__AVX512F__)
  // max/min return their second operand when one is a NaN: u is second in both.
  return (vf)_mm512_min_ps((__m512)splat(CLAMP), _mm512_max_ps((__m512)splat(-CLAMP), (__m512)u));
#else
  u = u < -CLAMP ? splat(-CLAMP) : u;  // a NaN compares false both times and stays
  return u > CLAMP ? splat(CLAMP) : u;
#endif
}

inline vf tanh16(vf u) {
  u = clamp(u);
  const vf u2 = u * u;
  vf num = splat(NUM[6]);
  for (int i = 5; i >= 0; --i) num = num * u2 + NUM[i];
  vf den = splat(DEN[3]);
  for (int i = 2; i >= 0; --i) den = den * u2 + DEN[i];
  return u * num * reciprocal(den);
}

// A block of n <= 16 lanes at p: loaded whole, or zero-padded past n.
inline vf load_n(const float* p, int64_t n) {
  if (n == LANES) return load(p);
  float buf[LANES] = {};
  std::memcpy(buf, p, n * sizeof(float));
  return load(buf);
}

inline void store_n(float* p, vf v, int64_t n) {
  if (n == LANES) return store(p, v);
  float buf[LANES];
  store(buf, v);
  std::memcpy(p, buf, n * sizeof(float));
}

// One 16-lane block of the forward: y (and t when t is not null) from x.
inline void forward_block(const float* __restrict x, const float* __restrict g, const float* __restrict b,
                          float* __restrict y, float* __restrict t, float ca, float cs, int64_t n) {
  const vf th = tanh16(load_n(x, n) * ca + cs);
  if (t) store_n(t, th, n);
  const vf gv = load_n(g, n);
  store_n(y, b ? gv * th + load_n(b, n) : gv * th, n);
}

void forward_rows(const float* __restrict x, const float* __restrict g, const float* __restrict b,
                  float* __restrict y, float* __restrict t, float ca, float cs, int64_t r0, int64_t r1,
                  int64_t channels) {
  const int64_t whole = channels - channels % LANES;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * channels;
    for (int64_t j = 0; j < whole; j += LANES)
      forward_block(x + o + j, g + j, b ? b + j : nullptr, y + o + j, t ? t + o + j : nullptr, ca, cs, LANES);
    if (whole < channels)
      forward_block(x + o + whole, g + whole, b ? b + whole : nullptr, y + o + whole, t ? t + o + whole : nullptr,
                    ca, cs, channels - whole);
  }
}

// The running sums of a backward chunk: dgamma and dbeta per channel (in the chunk's row of the sums),
// dalpha and ds per lane.
struct Sums {
  float* __restrict dg;
  float* __restrict db;
  vf da, ds;
};

// One 16-lane block of the backward: dx from dy and x (t recomputed when t is null), the sums updated.
// A tail's padding has dy = 0, so it adds nothing.
inline void backward_block(const float* __restrict dy, const float* __restrict x, const float* __restrict t,
                           const float* __restrict g, float* __restrict dx, Sums& s, int64_t j, float a,
                           float ca, float cs, float c, int64_t n) {
  const vf xv = load_n(x, n), gy = load_n(dy, n);
  const vf th = t ? load_n(t, n) : tanh16(xv * ca + cs);
  const vf dv = gy * load_n(g, n) * c * (1.0f - th * th);  // dL/d(alpha x + s)
  store_n(dx, dv * a, n);
  s.da += dv * xv;
  s.ds += dv;
  store_n(s.dg + j, load_n(s.dg + j, n) + gy * th, n);
  store_n(s.db + j, load_n(s.db + j, n) + gy, n);
}

void backward_rows(const float* __restrict dy, const float* __restrict x, const float* __restrict t,
                   const float* __restrict g, float* __restrict dx, Sums& s, float a, float ca, float cs, float c,
                   int64_t r0, int64_t r1, int64_t channels) {
  const int64_t whole = channels - channels % LANES;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * channels;
    for (int64_t j = 0; j < whole; j += LANES)
      backward_block(dy + o + j, x + o + j, t ? t + o + j : nullptr, g + j, dx + o + j, s, j, a, ca, cs, c, LANES);
    if (whole < channels)
      backward_block(dy + o + whole, x + o + whole, t ? t + o + whole : nullptr, g + whole, dx + o + whole, s,
                     whole, a, ca, cs, c, channels - whole);
  }
}

inline float sum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

float first(const torch::Tensor& t) { return t.numel() ? t.data_ptr<float>()[0] : 0.0f; }

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(!t.numel() || (t.scalar_type() == torch::kFloat && t.is_contiguous() && t.device().is_cpu()),
              name, " must be a contiguous fp32 CPU tensor");
}

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor alpha, torch::Tensor shift, torch::Tensor weight,
                                   torch::Tensor bias, double c, bool save_tanh) {
  for (auto [t, n] : {std::pair{x, "x"}, {alpha, "alpha"}, {shift, "shift"}, {weight, "weight"}, {bias, "bias"}})
    check(t, n);
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  auto y = torch::empty_like(x);
  auto t = save_tanh ? torch::empty_like(x) : torch::empty({0}, x.options());
  const float ca = c * first(alpha), cs = c * first(shift);
  const float *xp = x.data_ptr<float>(), *gp = weight.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float *yp = y.data_ptr<float>(), *tp = save_tanh ? t.data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    forward_rows(xp, gp, bp, yp, tp, ca, cs, r0, r1, channels);
  });
  return {y, t};
}

std::vector<torch::Tensor> backward(torch::Tensor dy, torch::Tensor x, torch::Tensor t, torch::Tensor alpha,
                                    torch::Tensor shift, torch::Tensor weight, double c) {
  for (auto [v, n] : {std::pair{dy, "dy"}, {x, "x"}, {t, "t"}, {alpha, "alpha"}, {shift, "shift"}, {weight, "weight"}})
    check(v, n);
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, CHUNKS));
  const int64_t width = 2 * channels + 2;  // a chunk's sums: dgamma, dbeta, dalpha, ds
  auto dx = torch::empty_like(x);
  auto parts = torch::zeros({chunks, width}, x.options());
  const float a = first(alpha), ca = c * a, cs = c * first(shift), fc = c;
  const float *dyp = dy.data_ptr<float>(), *xp = x.data_ptr<float>(), *gp = weight.data_ptr<float>();
  const float* tp = t.numel() ? t.data_ptr<float>() : nullptr;
  float *dxp = dx.data_ptr<float>(), *pp = parts.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      Sums s{pp + k * width, pp + k * width + channels, {}, {}};
      backward_rows(dyp, xp, tp, gp, dxp, s, a, ca, cs, fc, rows * k / chunks, rows * (k + 1) / chunks, channels);
      s.dg[2 * channels] = sum(s.da);
      s.dg[2 * channels + 1] = sum(s.ds);
    }
  });
  auto total = torch::zeros({width}, x.options());
  float* tot = total.data_ptr<float>();
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t i = 0; i < width; ++i) tot[i] += pp[k * width + i];
  return {dx, total.slice(0, 2 * channels, 2 * channels + 1).clone(), total.slice(0, 0, channels).clone(),
          total.slice(0, channels, 2 * channels).clone(), total.slice(0, 2 * channels + 1, width).clone()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "gamma * tanh(c (alpha x + s)) + beta, and tanh when save_tanh");
  m.def("backward", &backward, "dx, dalpha, dgamma, dbeta, ds of the forward");
}
