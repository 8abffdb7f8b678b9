// The CPU kernel of the fused tanh forms: y = gamma * tanh(c (alpha x + s)) + beta and its backward.
//
// Usage (from Python; built by normfree_bench.core.fused.cpu_kernel):
//   y, t = kernel.forward(x, alpha, shift, weight, bias, c, save_tanh)
//   dx, dalpha, dgamma, dbeta, dshift = kernel.backward(dy, x, t, alpha, shift, weight, c)
//
// x and dy: contiguous (rows, channels), fp32 or fp64; alpha and shift: 1-element (shift may be empty, read as 0);
// weight: (channels,); bias: (channels,) or empty (read as 0); all of x's dtype. c is 1 for DyT and 1/2 for the centred
// sigmoid (2 sigmoid(u) - 1 = tanh(u / 2)). t is tanh(c (alpha x + s)) when the forward saved it (the backward
// then needs no tanh), else an empty tensor and the backward recomputes it.
//
// tanh is the rational minimax approximation that Eigen and XLA use for float tanh (odd degree-13 numerator,
// even degree-6 denominator, clamped to +-7.905; Eigen's generic_fast_tanh_float,
// https://gitlab.com/libeigen/eigen/-/blob/master/Eigen/src/Core/MathFunctionsImpl.h), evaluated 16 lanes at a
// time with GCC's vector extensions; the one division is a reciprocal estimate refined by one Newton step, 14-bit
// with AVX-512 (about 2^-28 relative after the step), 12-bit with AVX2 (about 2^-23), else a true division. The clamp
// and the estimate use the AVX-512 or AVX intrinsics: at 16 lanes on 8-lane AVX2, GCC would lower the vector
// extensions' compare-select to scalar code (the kernel ran twice as slow so). NaN propagates (the clamp
// keeps a NaN), and +-inf gives +-1 within 3e-7. fp64 (8 lanes) takes std::tanh per lane and a true division
// instead, and otherwise the same code: it is what torch.autograd.gradcheck checks the kernel with.
//
// Rows are split into at most CHUNKS fixed chunks; each chunk sums its dalpha, ds, dgamma and dbeta, and the
// chunk sums are added in chunk order, so the parameter gradients do not depend on the thread count. A row's
// tail (channels % lanes) goes through a zero-padded buffer of a whole vector, so every element takes the same
// arithmetic.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t CHUNKS = 64;
constexpr int BYTES = 64;  // one vector: 16 fp32 or 8 fp64 lanes

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(BYTES)));
  static constexpr int64_t lanes = BYTES / sizeof(T);
};

constexpr float CLAMP = 7.90531110763549805f;
constexpr float NUM[7] = {4.89352455891786e-03f, 6.37261928875436e-04f, 1.48572235717979e-05f,
                          5.12229709037114e-08f, -8.60467152213735e-11f, 2.00018790482477e-13f,
                          -2.76076847742355e-16f};
constexpr float DEN[4] = {4.89352518554385e-03f, 2.26843463243900e-03f, 1.18534705686654e-04f,
                          1.19825839466702e-06f};

template <typename T, typename V = typename Vec<T>::type>
inline V splat(T s) {
  return V{} + s;
}

using vf = Vec<float>::type;
using vd = Vec<double>::type;

#if defined(__AVX__) && !defined(__AVX512F__)
// A 16-lane vector as the two 8-lane AVX registers it is made of (GCC lowers the vector extensions' compare-select
// to scalar code at this width, so clamp and reciprocal use the intrinsics half by half).
union Halves {
  vf v;
  __m256 h[2];
};
#endif

inline vf reciprocal(vf d) {
#if defined(__AVX512F__)
  vf r = (vf)_mm512_rcp14_ps((__m512)d);
#elif defined(__AVX__)
  Halves e{d};
  for (__m256& h : e.h) h = _mm256_rcp_ps(h);  // 12-bit estimate
  vf r = e.v;
#else
  return 1.0f / d;
#endif
#if defined(__AVX__)
  return r * (2.0f - d * r);  // one Newton step
#endif
}

// u clamped to [-CLAMP, CLAMP]; a NaN stays NaN.
inline vf clamp(vf u) {
  // max/min return their second operand when one is a NaN: u is second in both.
#if defined(__AVX512F__)
  return (vf)_mm512_min_ps((__m512)splat(CLAMP), _mm512_max_ps((__m512)splat(-CLAMP), (__m512)u));
#elif defined(__AVX__)
  Halves a{u};
  for (__m256& h : a.h) h = _mm256_min_ps(_mm256_set1_ps(CLAMP), _mm256_max_ps(_mm256_set1_ps(-CLAMP), h));
  return a.v;
#else
  u = u < -CLAMP ? splat(-CLAMP) : u;  // a NaN compares false both times and stays
  return u > CLAMP ? splat(CLAMP) : u;
#endif
}

inline vf tanh_v(vf u) {
  u = clamp(u);
  const vf u2 = u * u;
  vf num = splat(NUM[6]);
  for (int i = 5; i >= 0; --i) num = num * u2 + NUM[i];
  vf den = splat(DEN[3]);
  for (int i = 2; i >= 0; --i) den = den * u2 + DEN[i];
  return u * num * reciprocal(den);
}

inline vd tanh_v(vd u) {
  for (int i = 0; i < Vec<double>::lanes; ++i) u[i] = std::tanh(u[i]);
  return u;
}

// A vector of n <= lanes elements at p: loaded whole, or zero-padded past n.
template <typename T, typename V = typename Vec<T>::type>
inline V load_n(const T* p, int64_t n) {
  V v;
  if (n == Vec<T>::lanes) {
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  T buf[Vec<T>::lanes] = {};
  std::memcpy(buf, p, n * sizeof(T));
  std::memcpy(&v, buf, sizeof v);
  return v;
}

template <typename T, typename V = typename Vec<T>::type>
inline void store_n(T* p, V v, int64_t n) {
  if (n == Vec<T>::lanes) {
    std::memcpy(p, &v, sizeof v);
    return;
  }
  T buf[Vec<T>::lanes];
  std::memcpy(buf, &v, sizeof v);
  std::memcpy(p, buf, n * sizeof(T));
}

template <typename T, typename V = typename Vec<T>::type>
inline T sum(V v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::lanes; ++i) s += v[i];
  return s;
}

// Calls f(j, n) for each vector of a row: j its first channel, n its lanes (fewer for the tail). The whole
// vectors come first, in a loop of their own, so that the compiler sees n == lanes there.
template <typename T, typename F>
inline void row_vectors(int64_t channels, F&& f) {
  constexpr int64_t lanes = Vec<T>::lanes;
  const int64_t whole = channels - channels % lanes;
  for (int64_t j = 0; j < whole; j += lanes) f(j, lanes);
  if (whole < channels) f(whole, channels - whole);
}

template <typename T>
void forward_rows(const T* __restrict x, const T* __restrict g, const T* __restrict b, T* __restrict y,
                  T* __restrict t, T ca, T cs, int64_t r0, int64_t r1, int64_t channels) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * channels;
    row_vectors<T>(channels, [=](int64_t j, int64_t n) {
      const auto th = tanh_v(load_n(x + o + j, n) * ca + cs);
      if (t) store_n(t + o + j, th, n);
      const auto gv = load_n(g + j, n);
      store_n(y + o + j, b ? gv * th + load_n(b + j, n) : gv * th, n);
    });
  }
}

// One chunk of rows of the backward: dx, and the chunk's sums: dgamma and dbeta per channel in `sums`,
// then dalpha and ds. A tail's padding has dy = 0, so it adds nothing.
template <typename T>
void backward_rows(const T* __restrict dy, const T* __restrict x, const T* __restrict t, const T* __restrict g,
                   T* __restrict dx, T* __restrict sums, T a, T ca, T cs, T c, int64_t r0, int64_t r1,
                   int64_t channels) {
  using V = typename Vec<T>::type;
  T* __restrict dg = sums;
  T* __restrict db = sums + channels;
  V da{}, ds{};
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * channels;
    row_vectors<T>(channels, [&](int64_t j, int64_t n) {
      const V xv = load_n(x + o + j, n), gy = load_n(dy + o + j, n);
      const V th = t ? load_n(t + o + j, n) : tanh_v(xv * ca + cs);
      const V dv = gy * load_n(g + j, n) * c * (1 - th * th);  // dL/d(alpha x + s)
      store_n(dx + o + j, dv * a, n);
      da += dv * xv;
      ds += dv;
      store_n(dg + j, load_n(dg + j, n) + gy * th, n);
      store_n(db + j, load_n(db + j, n) + gy, n);
    });
  }
  sums[2 * channels] = sum<T>(da);
  sums[2 * channels + 1] = sum<T>(ds);
}

template <typename T>
T first(const torch::Tensor& t) {
  return t.numel() ? t.data_ptr<T>()[0] : T(0);
}

template <typename T>
const T* data_or_null(const torch::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

void check(const torch::Tensor& x, std::initializer_list<std::pair<torch::Tensor, const char*>> others) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
                  (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble),
              "x must be a contiguous fp32 or fp64 CPU tensor");
  for (const auto& [t, name] : others)
    TORCH_CHECK(!t.numel() || (t.scalar_type() == x.scalar_type() && t.is_contiguous() && t.device().is_cpu()),
                name, " must be a contiguous CPU tensor of x's dtype");
}

template <typename T>
void forward_impl(const torch::Tensor& x, const torch::Tensor& alpha, const torch::Tensor& shift,
                  const torch::Tensor& weight, const torch::Tensor& bias, double c, torch::Tensor& y,
                  torch::Tensor& t) {
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  const T ca = c * first<T>(alpha), cs = c * first<T>(shift);
  const T *xp = x.data_ptr<T>(), *gp = weight.data_ptr<T>(), *bp = data_or_null<T>(bias);
  T *yp = y.data_ptr<T>(), *tp = t.numel() ? t.data_ptr<T>() : nullptr;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    forward_rows<T>(xp, gp, bp, yp, tp, ca, cs, r0, r1, channels);
  });
}

template <typename T>
void backward_impl(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& t,
                   const torch::Tensor& alpha, const torch::Tensor& shift, const torch::Tensor& weight, double c,
                   torch::Tensor& dx, torch::Tensor& parts, torch::Tensor& total) {
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  const int64_t chunks = parts.size(0), width = parts.size(1);
  const T a = first<T>(alpha), ca = c * a, cs = c * first<T>(shift), fc = c;
  const T *dyp = dy.data_ptr<T>(), *xp = x.data_ptr<T>(), *gp = weight.data_ptr<T>(), *tp = data_or_null<T>(t);
  T *dxp = dx.data_ptr<T>(), *pp = parts.data_ptr<T>(), *tot = total.data_ptr<T>();
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      backward_rows<T>(dyp, xp, tp, gp, dxp, pp + k * width, a, ca, cs, fc, rows * k / chunks,
                       rows * (k + 1) / chunks, channels);
  });
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t i = 0; i < width; ++i) tot[i] += pp[k * width + i];
}

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor alpha, torch::Tensor shift, torch::Tensor weight,
                                   torch::Tensor bias, double c, bool save_tanh) {
  check(x, {{alpha, "alpha"}, {shift, "shift"}, {weight, "weight"}, {bias, "bias"}});
  auto y = torch::empty_like(x);
  auto t = save_tanh ? torch::empty_like(x) : torch::empty({0}, x.options());
  if (x.scalar_type() == torch::kFloat)
    forward_impl<float>(x, alpha, shift, weight, bias, c, y, t);
  else
    forward_impl<double>(x, alpha, shift, weight, bias, c, y, t);
  return {y, t};
}

std::vector<torch::Tensor> backward(torch::Tensor dy, torch::Tensor x, torch::Tensor t, torch::Tensor alpha,
                                    torch::Tensor shift, torch::Tensor weight, double c) {
  check(x, {{dy, "dy"}, {t, "t"}, {alpha, "alpha"}, {shift, "shift"}, {weight, "weight"}});
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, CHUNKS));
  const int64_t width = 2 * channels + 2;  // a chunk's sums: dgamma, dbeta, dalpha, ds
  auto dx = torch::empty_like(x);
  auto parts = torch::zeros({chunks, width}, x.options());
  auto total = torch::zeros({width}, x.options());
  if (x.scalar_type() == torch::kFloat)
    backward_impl<float>(dy, x, t, alpha, shift, weight, c, dx, parts, total);
  else
    backward_impl<double>(dy, x, t, alpha, shift, weight, c, dx, parts, total);
  return {dx, total.slice(0, 2 * channels, 2 * channels + 1).clone(), total.slice(0, 0, channels).clone(),
          total.slice(0, channels, 2 * channels).clone(), total.slice(0, 2 * channels + 1, width).clone()};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "gamma * tanh(c (alpha x + s)) + beta, and tanh when save_tanh");
  m.def("backward", &backward, "dx, dalpha, dgamma, dbeta, ds of the forward");
}
