// CPU reference for the partial, interleaved-MRoPE rotary embedding of q and k (spec 2.5).
//
// With h = R/2 and (c_j, s_j) = (cos, sin) of token n's angle for frequency j, the forward maps
// each pair (x_j, x_{j+h}) of a head's rotary slice by the rotation
//   [x'_j    ]   [c_j  -s_j] [x_j    ]
//   [x'_{j+h}] = [s_j   c_j] [x_{j+h}]
// (HF: x * cos + rotate_half(x) * sin with cos/sin = [angle, angle]). The backward applies the
// transpose [c s; -s c], i.e. the rotation by -angle, to the incoming gradient. Both use the
// same float32 cos/sin values, so the backward is the exact transpose of the forward.
//
// Angles follow HF's float32 arithmetic step by step:
//   inv_freq_j = 1.0f / powf(float(theta), float(2j) / float(R))     (default rope init)
//   angle      = float(pos) * inv_freq_j                              (inv_freq @ positions)
//   cos, sin   = cosf(angle), sinf(angle), then converted to T
// Frequency j reads row H (1) when j % 3 == 1 and j < 3 * mrope_section[1], row W (2) when
// j % 3 == 2 and j < 3 * mrope_section[2], otherwise row T (0) (apply_interleaved_mrope).
#include "cpu/rope.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace deltatron::cpu {

namespace {

// The rotate-half rotation of one token's H heads (x_HK [H, K]) by the angles whose cos and
// (signed) sin are cs, sn [half]: pairs (j, j + half).
template <typename T>
void rotate_heads(T* x_HK, int64_t H, int64_t K, int64_t half, const T* cs, const T* sn) {
  for (int64_t h = 0; h < H; ++h) {
    T* x = x_HK + h * K;
    for (int64_t j = 0; j < half; ++j) {
      const T a = x[j], b = x[j + half];
      x[j] = a * cs[j] - b * sn[j];
      x[j + half] = b * cs[j] + a * sn[j];
    }
  }
}

constexpr int64_t kParallelMin = 16384;  // rotated elements below which one thread is faster

// Position row (0 = T, 1 = H, 2 = W) that frequency j takes its angle from.
inline int mrope_row(int64_t j, const int mrope_section[3]) {
  if (j % 3 == 1 && j < 3 * int64_t(mrope_section[1])) return 1;
  if (j % 3 == 2 && j < 3 * int64_t(mrope_section[2])) return 2;
  return 0;
}

void check_args(const char* name, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
                const int mrope_section[3]) {
  DT_CHECK(N >= 0 && H >= 0 && K >= 0, name, ": negative size N=", N, " H=", H, " K=", K);
  DT_CHECK(R >= 0 && R % 2 == 0 && R <= K, name, ": rotary dim R=", R,
           " must be even and within the head dim K=", K);
  DT_CHECK(mrope_section != nullptr, name, ": mrope_section is null");
  DT_CHECK(N == 0 || pos_3N != nullptr, name, ": positions are null");
}

// sign = +1: forward rotation; sign = -1: its transpose.
template <typename T>
void rope_apply(T* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
                double theta, const int mrope_section[3], int sign) {
  const int64_t half = R / 2;
  if (N == 0 || H == 0 || half == 0) return;
  std::vector<float> inv_freq(half);
  std::vector<int> row(half);
  for (int64_t j = 0; j < half; ++j) {
    inv_freq[j] = 1.0f / std::pow(float(theta), float(2 * j) / float(R));
    row[j] = mrope_row(j, mrope_section);
  }
#pragma omp parallel if (N * H * R > kParallelMin)
  {
    std::vector<T> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < half; ++j) {
        const float angle = float(pos_3N[row[j] * N + n]) * inv_freq[j];
        cs[j] = T(std::cos(angle));
        sn[j] = T(sign) * T(std::sin(angle));
      }
      rotate_heads(x_NHK + n * H * K, H, K, half, cs.data(), sn.data());
    }
  }
}

}  // namespace

template <typename T>
void rope_fwd(T* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]) {
  check_args("rope_fwd", pos_3N, N, H, K, R, mrope_section);
  rope_apply(x_NHK, pos_3N, N, H, K, R, theta, mrope_section, +1);
}

template <typename T>
void rope_bwd(T* dx_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]) {
  check_args("rope_bwd", pos_3N, N, H, K, R, mrope_section);
  rope_apply(dx_NHK, pos_3N, N, H, K, R, theta, mrope_section, -1);
}

template <typename T>
void rope_vision(T* x_NHK, const int32_t* pos_2N, int64_t N, int64_t H, int64_t K, double theta,
                 int sign) {
  DT_CHECK(N >= 0 && H >= 0 && K > 0 && K % 4 == 0, "rope_vision: bad sizes N=", N, " H=", H,
           " K=", K, " (K must be a multiple of 4)");
  DT_CHECK(N == 0 || pos_2N != nullptr, "rope_vision: positions are null");
  const int64_t half = K / 2, quarter = K / 4;
  std::vector<double> inv(quarter);
  for (int64_t j = 0; j < quarter; ++j)
    inv[j] = 1.0 / std::pow(theta, double(2 * j) / double(half));
#pragma omp parallel if (N * H * K > kParallelMin)
  {
    std::vector<T> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < half; ++j) {
        const double p = j < quarter ? double(pos_2N[n]) : double(pos_2N[N + n]);
        const double angle = p * inv[j % quarter];
        cs[j] = T(std::cos(angle));
        sn[j] = T(sign) * T(std::sin(angle));
      }
      rotate_heads(x_NHK + n * H * K, H, K, half, cs.data(), sn.data());
    }
  }
}

template void rope_vision<float>(float*, const int32_t*, int64_t, int64_t, int64_t, double, int);
template void rope_vision<double>(double*, const int32_t*, int64_t, int64_t, int64_t, double, int);

#define DT_INSTANTIATE(T)                                                                   \
  template void rope_fwd<T>(T*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double, \
                            const int[3]);                                                  \
  template void rope_bwd<T>(T*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double, \
                            const int[3]);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
