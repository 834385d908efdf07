// CPU reference for the grouped expert GEMMs: a loop over the experts' row slices, each one
// cpu::linear_* call on its weight slice (the expert order does not matter: the slices are
// disjoint in x, y, dx and dW).
#include "cpu/grouped_linear.h"

#include <algorithm>

#include "core/error.h"
#include "cpu/linear.h"

namespace deltatron::cpu {

namespace {

void check_offsets(const char* op, const int64_t* off, int64_t E, int64_t I, int64_t O) {
  DT_CHECK(E >= 0 && I >= 0 && O >= 0, op, ": need E, I, O >= 0, got E=", E, " I=", I, " O=", O);
  DT_CHECK(off[0] == 0, op, ": offsets_E1[0] is ", off[0], ", expected 0");
  for (int64_t e = 0; e < E; ++e)
    DT_CHECK(off[e + 1] >= off[e], op, ": offsets_E1 decrease at expert ", e, " (", off[e], " > ",
             off[e + 1], ")");
}

}  // namespace

template <typename T>
void grouped_linear_fwd(const T* x_RI, const T* W_EOI, const int64_t* off, int64_t E, int64_t I,
                        int64_t O, T* y_RO) {
  check_offsets("grouped_linear_fwd", off, E, I, O);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    linear_fwd<T>(x_RI + off[e] * I, W_EOI + e * O * I, rows, I, O, y_RO + off[e] * O);
  }
}

template <typename T>
void grouped_linear_bwd(const T* x_RI, const T* W_EOI, const T* dy_RO, const int64_t* off,
                        int64_t E, int64_t I, int64_t O, T* dx_RI, T* dW_EOI, bool accumulate_dw) {
  check_offsets("grouped_linear_bwd", off, E, I, O);
  if (!dx_RI && !dW_EOI) return;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) {
      if (dW_EOI && !accumulate_dw) std::fill(dW_EOI + e * O * I, dW_EOI + (e + 1) * O * I, T(0));
      continue;
    }
    linear_bwd<T>(x_RI + off[e] * I, W_EOI + e * O * I, dy_RO + off[e] * O, rows, I, O,
                  dx_RI ? dx_RI + off[e] * I : nullptr, false,
                  dW_EOI ? dW_EOI + e * O * I : nullptr, T(1), accumulate_dw);
  }
}

template void grouped_linear_fwd<float>(const float*, const float*, const int64_t*, int64_t,
                                        int64_t, int64_t, float*);
template void grouped_linear_fwd<double>(const double*, const double*, const int64_t*, int64_t,
                                         int64_t, int64_t, double*);
template void grouped_linear_bwd<float>(const float*, const float*, const float*, const int64_t*,
                                        int64_t, int64_t, int64_t, float*, float*, bool);
template void grouped_linear_bwd<double>(const double*, const double*, const double*,
                                         const int64_t*, int64_t, int64_t, int64_t, double*,
                                         double*, bool);

}  // namespace deltatron::cpu
