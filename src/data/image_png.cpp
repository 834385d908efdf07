// PNG to 8-bit RGB through libpng, the sample conversion written out to match Pillow.
//
// libpng is asked only to unpack sub-byte samples (png_set_packing: one byte per sample, values
// unscaled) and to de-interlace; no gamma, sBIT, tRNS or 16-bit transforms. The conversion to
// RGB follows Pillow's PNG modes and their convert("RGB"):
//   grey 1/2/4/8   L (or "1"), v scaled to 8 bits: v * 255 / (2^bits - 1); then R = G = B
//   grey 16        I;16, whose conversion to RGB clamps: min(v, 255)
//   RGB / RGBA / grey+alpha 16   RGB;16B etc.: the high byte of each sample
//   palette        the PLTE entry; an index past the palette's end gives black (0, 0, 0), as
//                  Pillow's palette lookup does
//   alpha, tRNS    dropped (transparent pixels keep their stored colour)
// The rest of the file after the image data (text chunks, IEND) is not read: Pillow does not
// require it either.
//
// libpng's errors longjmp back to decode_png's setjmp; only C frames lie in between and every
// C++ object used across it is created before the setjmp.
#include <png.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "data/image_codecs.h"

namespace deltatron::data {
namespace {

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t pos;
  char message[256];
};

void on_error(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof(src->message), "%s", msg);
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

void read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->size - src->pos < n) png_error(png, "unexpected end of file (truncated)");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

}  // namespace

ImageRGB8 decode_png(std::span<const uint8_t> bytes, const std::string& name) {
  ImageRGB8 img;
  std::vector<uint8_t> pixels;   // the decoded rows as libpng gives them
  std::vector<png_bytep> rows;   // pointers into pixels
  std::vector<uint8_t> palette;  // 256 entries of 3 bytes
  PngSource src{bytes.data(), bytes.size(), 0, {0}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
  DT_CHECK(png != nullptr, "image ", name, ": cannot create a PNG reader");
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    core::fail("image ", name, ": cannot create a PNG reader");
  }
  // Set between the setjmp and the end of reading: volatile, so a longjmp cannot leave them
  // stale in registers (they are not read after one, but the compiler cannot know).
  const char* volatile refusal = nullptr;
  volatile int64_t bit_depth = 0, colour = 0, channels = 0;
  size_t row_bytes = 0;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    core::fail("image ", name, ": corrupt or truncated PNG (libpng: ", src.message, ")");
  }
  png_set_read_fn(png, &src, read_bytes);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // checked below against kMaxImagePixels
  png_read_info(png, info);
  img.width = png_get_image_width(png, info);
  img.height = png_get_image_height(png, info);
  bit_depth = png_get_bit_depth(png, info);
  colour = png_get_color_type(png, info);
  if (img.width * img.height > kMaxImagePixels) {
    refusal = "the image has more than 178956970 pixels (Pillow's decompression-bomb limit)";
  } else {
    if (colour == PNG_COLOR_TYPE_PALETTE) {
      png_colorp entries = nullptr;
      int n = 0;
      if (png_get_PLTE(png, info, &entries, &n) != PNG_INFO_PLTE) png_error(png, "no PLTE chunk");
      palette.assign(256 * 3, 0);  // entries past the PLTE's are black, as in Pillow
      for (int i = 0; i < std::min(n, 256); ++i) {
        palette[size_t(3 * i)] = entries[i].red;
        palette[size_t(3 * i + 1)] = entries[i].green;
        palette[size_t(3 * i + 2)] = entries[i].blue;
      }
    }
    if (bit_depth < 8) png_set_packing(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    channels = png_get_channels(png, info);
    row_bytes = png_get_rowbytes(png, info);
    pixels.resize(row_bytes * size_t(img.height));
    rows.resize(size_t(img.height));
    for (int64_t y = 0; y < img.height; ++y)
      rows[size_t(y)] = pixels.data() + size_t(y) * row_bytes;
    png_read_image(png, rows.data());
  }
  png_destroy_read_struct(&png, &info, nullptr);
  DT_CHECK(refusal == nullptr, "image ", name, ": ", refusal);

  // Samples to RGB. s(p, c): sample c of pixel p in a row, 8-bit (or the high byte of 16).
  const int64_t W = img.width;
  const bool wide = bit_depth == 16;
  img.rgb_HW3.resize(size_t(W * img.height * 3));
  for (int64_t y = 0; y < img.height; ++y) {
    const uint8_t* in = rows[size_t(y)];
    uint8_t* out = img.rgb_HW3.data() + y * W * 3;
    auto sample = [&](int64_t x, int64_t c) { return in[(x * channels + c) * (wide ? 2 : 1)]; };
    for (int64_t x = 0; x < W; ++x) {
      uint8_t* o = out + 3 * x;
      if (colour == PNG_COLOR_TYPE_PALETTE) {
        std::memcpy(o, palette.data() + 3 * size_t(in[x]), 3);
      } else if (colour == PNG_COLOR_TYPE_GRAY && wide) {
        const int v = (in[2 * x] << 8) | in[2 * x + 1];  // I;16 -> RGB clamps
        o[0] = o[1] = o[2] = uint8_t(std::min(v, 255));
      } else if (colour == PNG_COLOR_TYPE_GRAY || colour == PNG_COLOR_TYPE_GRAY_ALPHA) {
        int v = sample(x, 0);
        if (bit_depth < 8) v = v * 255 / ((1 << bit_depth) - 1);
        o[0] = o[1] = o[2] = uint8_t(v);
      } else {  // RGB, RGBA
        o[0] = sample(x, 0);
        o[1] = sample(x, 1);
        o[2] = sample(x, 2);
      }
    }
  }
  return img;
}

}  // namespace deltatron::data
