// Pillow-exact separable bicubic resampling of RGB8 images (the contract is in image_resize.h).
#include "data/image_resize.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace deltatron::data {
namespace {

constexpr int kPrecisionBits = 22;  // 32 bits - 8 (sample) - 2 (head room for the lobes' sums)

uint8_t clip8(int64_t acc) { return uint8_t(std::clamp<int64_t>(acc >> kPrecisionBits, 0, 255)); }

}  // namespace

double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

ResampleTaps bicubic_taps(int64_t n_in, int64_t n_out) {
  DT_CHECK(n_in >= 1 && n_out >= 1, "bicubic_taps: sizes ", n_in, " -> ", n_out);
  const double scale = double(n_in) / double(n_out);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;  // the kernel's support (2) stretched
  const double inv_filter_scale = 1.0 / filter_scale;
  ResampleTaps t;
  t.ksize = int64_t(std::ceil(support)) * 2 + 1;
  t.first.resize(size_t(n_out));
  t.count.resize(size_t(n_out));
  t.taps.assign(size_t(n_out * t.ksize), 0);
  std::vector<double> w(size_t(t.ksize));
  for (int64_t i = 0; i < n_out; ++i) {
    const double center = (double(i) + 0.5) * scale;
    // Truncation toward zero, as C's (int) cast; negative starts are clamped to 0 anyway.
    int64_t first = int64_t(center - support + 0.5);
    if (first < 0) first = 0;
    int64_t end = int64_t(center + support + 0.5);
    if (end > n_in) end = n_in;
    const int64_t count = end - first;
    double sum = 0.0;
    for (int64_t k = 0; k < count; ++k) {
      w[size_t(k)] = bicubic_kernel((double(k + first) - center + 0.5) * inv_filter_scale);
      sum += w[size_t(k)];
    }
    for (int64_t k = 0; k < count; ++k) {
      double v = w[size_t(k)];
      if (sum != 0.0) v /= sum;
      const double q = v * double(1 << kPrecisionBits);
      t.taps[size_t(i * t.ksize + k)] = int32_t(v < 0 ? -0.5 + q : 0.5 + q);
    }
    t.first[size_t(i)] = first;
    t.count[size_t(i)] = count;
  }
  return t;
}

ImageRGB8 resize_bicubic(const ImageRGB8& in, int64_t out_width, int64_t out_height) {
  DT_CHECK(in.width >= 1 && in.height >= 1 && out_width >= 1 && out_height >= 1,
           "resize_bicubic: ", in.width, "x", in.height, " -> ", out_width, "x", out_height);
  DT_CHECK(int64_t(in.rgb_HW3.size()) == in.width * in.height * 3,
           "resize_bicubic: the pixel buffer does not hold ", in.width, "x", in.height, " RGB");
  if (out_width == in.width && out_height == in.height) return in;
  const ResampleTaps tv = bicubic_taps(in.height, out_height);
  // The input rows the vertical pass touches: [row0, row1).
  const int64_t row0 = tv.first.front();
  const int64_t row1 = tv.first.back() + tv.count.back();

  // Horizontal pass over rows [row0, row1) into tmp (or the input itself when the width stays).
  ImageRGB8 tmp;
  const ImageRGB8* src = &in;
  int64_t src_row0 = 0;  // the input row that src's row 0 holds
  if (out_width != in.width) {
    const ResampleTaps th = bicubic_taps(in.width, out_width);
    tmp.width = out_width;
    tmp.height = row1 - row0;
    tmp.rgb_HW3.resize(size_t(tmp.width * tmp.height * 3));
    for (int64_t y = 0; y < tmp.height; ++y) {
      const uint8_t* row_in = in.rgb_HW3.data() + (y + row0) * in.width * 3;
      uint8_t* row_out = tmp.rgb_HW3.data() + y * out_width * 3;
      for (int64_t x = 0; x < out_width; ++x) {
        const int32_t* k = th.taps.data() + x * th.ksize;
        const uint8_t* p = row_in + th.first[size_t(x)] * 3;
        for (int c = 0; c < 3; ++c) {
          int64_t acc = int64_t(1) << (kPrecisionBits - 1);
          for (int64_t j = 0; j < th.count[size_t(x)]; ++j) acc += int64_t(p[j * 3 + c]) * k[j];
          row_out[x * 3 + c] = clip8(acc);
        }
      }
    }
    src = &tmp;
    src_row0 = row0;
  }
  if (out_height == in.height) return src == &tmp ? tmp : in;

  // Vertical pass from src into out.
  ImageRGB8 out;
  out.width = out_width;
  out.height = out_height;
  out.rgb_HW3.resize(size_t(out_width * out_height * 3));
  const int64_t stride = out_width * 3;  // src has out_width columns by now
  for (int64_t y = 0; y < out_height; ++y) {
    const int32_t* k = tv.taps.data() + y * tv.ksize;
    const uint8_t* col0 = src->rgb_HW3.data() + (tv.first[size_t(y)] - src_row0) * stride;
    uint8_t* row_out = out.rgb_HW3.data() + y * stride;
    for (int64_t i = 0; i < stride; ++i) {
      int64_t acc = int64_t(1) << (kPrecisionBits - 1);
      for (int64_t j = 0; j < tv.count[size_t(y)]; ++j) acc += int64_t(col0[j * stride + i]) * k[j];
      row_out[i] = clip8(acc);
    }
  }
  return out;
}

}  // namespace deltatron::data
