// Bicubic resampling of 8-bit RGB images, bit-exact with Pillow's Image.resize(BICUBIC).
//
// The algorithm (Pillow src/libImaging/Resample.c, read for its formulas; spec qwen35-vl.md 2.3):
// separable, the horizontal pass first, each pass rounding to uint8.
//   kernel   K(x) = ((a+2)|x| - (a+3)) x^2 + 1 for |x| < 1, (((|x|-5)|x| + 8)|x| - 4) a for
//            1 <= |x| < 2, else 0; a = -0.5
//   per output index i of a pass from n_in to n_out samples:
//            scale = n_in / n_out, fs = max(scale, 1) (antialias: the kernel is stretched when
//            shrinking), support = 2 fs, center = (i + 0.5) scale,
//            first = max(0, (int)(center - support + 0.5)), end = min(n_in, (int)(center +
//            support + 0.5)), w_k = K((k + first - center + 0.5) / fs) for k < end - first,
//            normalised to sum 1, then fixed point with 22 fraction bits rounded half away from
//            zero: (int)(w 2^22 +- 0.5)
//   output   clamp((2^21 + sum_k in[first + k] w_k) >> 22, 0, 255), integer arithmetic
// The vertical pass only needs the input rows its taps touch; the horizontal pass computes just
// those rows (the values do not depend on it). A pass whose size does not change is skipped;
// at equal sizes the whole resize is a copy (as Pillow's is).
#pragma once

#include <cstdint>
#include <vector>

#include "data/image.h"

namespace deltatron::data {

// One pass's taps: for output index i, taps[i * ksize + k] weighs input first[i] + k, for
// k < count[i] (the rest are 0). Weights are Q22 fixed point.
struct ResampleTaps {
  int64_t ksize = 0;
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<int32_t> taps;
};

// Pillow's bicubic K(x) with a = -0.5.
double bicubic_kernel(double x);

// The taps of one pass from n_in to n_out samples (both >= 1).
ResampleTaps bicubic_taps(int64_t n_in, int64_t n_out);

// The image resized to out_width x out_height (both >= 1) as Pillow's
// Image.resize((out_width, out_height), Image.BICUBIC, reducing_gap=None) does for mode RGB.
ImageRGB8 resize_bicubic(const ImageRGB8& in, int64_t out_width, int64_t out_height);

}  // namespace deltatron::data
