// The per-format decoders behind data::decode_image (internal to src/data/image_*.cpp).
// Each takes the whole file's bytes and a name for messages, returns 8-bit RGB as image.h
// describes, and throws core::Error naming the file on any failure.
#pragma once

#include <span>
#include <string>

#include "data/image.h"

namespace deltatron::data {

ImageRGB8 decode_jpeg(std::span<const uint8_t> bytes, const std::string& name);
ImageRGB8 decode_png(std::span<const uint8_t> bytes, const std::string& name);
ImageRGB8 decode_webp(std::span<const uint8_t> bytes, const std::string& name);

// The largest pixel count a decoder accepts: Pillow's decompression-bomb error threshold
// (2 * Image.MAX_IMAGE_PIXELS = 2 * 89478485), where Pillow refuses to open the file. Also a
// guard against corrupt headers asking for absurd allocations.
inline constexpr int64_t kMaxImagePixels = 2 * int64_t(89478485);

}  // namespace deltatron::data
