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

// The largest width or height and pixel count a decoder accepts (a guard against corrupt
// headers asking for absurd allocations): 2^16 per side (JPEG's own limit), 2^28 pixels.
inline constexpr int64_t kMaxImageSide = 65535;
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

}  // namespace deltatron::data
