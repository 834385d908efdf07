// WebP to 8-bit RGB through libwebp's simple decoding API.
//
// Pillow decodes a WebP file through libwebp's animation decoder, whose first frame of a still
// image is the plain decode into non-premultiplied RGBA (alpha 255 without an alpha channel);
// convert("RGB") then drops alpha. Animated files (more than the first frame to think about)
// are refused.
#include <webp/decode.h>

#include <cstring>

#include "core/error.h"
#include "data/image_codecs.h"

namespace deltatron::data {
namespace {

const char* status_text(VP8StatusCode s) {
  switch (s) {
    case VP8_STATUS_OK:
      return "ok";
    case VP8_STATUS_OUT_OF_MEMORY:
      return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
      return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
      return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
      return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
      return "suspended";
    case VP8_STATUS_USER_ABORT:
      return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
      return "not enough data (truncated)";
  }
  return "unknown status";
}

}  // namespace

ImageRGB8 decode_webp(std::span<const uint8_t> bytes, const std::string& name) {
  WebPBitstreamFeatures f{};
  VP8StatusCode status = WebPGetFeatures(bytes.data(), bytes.size(), &f);
  DT_CHECK(status == VP8_STATUS_OK, "image ", name,
           ": corrupt or truncated WebP (libwebp: ", status_text(status), ")");
  DT_CHECK(!f.has_animation, "image ", name, ": animated WebP is not supported");
  DT_CHECK(f.width > 0 && f.height > 0 && int64_t(f.width) * f.height <= kMaxImagePixels, "image ",
           name, ": WebP size ", f.width, "x", f.height,
           " is out of range (at most 178956970 pixels, Pillow's decompression-bomb limit)");
  ImageRGB8 img;
  img.width = f.width;
  img.height = f.height;
  std::vector<uint8_t> rgba(size_t(img.width * img.height * 4));
  const uint8_t* ok =
      WebPDecodeRGBAInto(bytes.data(), bytes.size(), rgba.data(), rgba.size(), int(img.width * 4));
  DT_CHECK(ok != nullptr, "image ", name, ": corrupt or truncated WebP (libwebp cannot decode it)");
  img.rgb_HW3.resize(size_t(img.width * img.height * 3));
  for (size_t p = 0; p < size_t(img.width * img.height); ++p)
    std::memcpy(img.rgb_HW3.data() + 3 * p, rgba.data() + 4 * p, 3);
  return img;
}

}  // namespace deltatron::data
