// Image files to 8-bit RGB: format detection from the magic bytes, file reading, dispatch.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "data/image.h"
#include "data/image_codecs.h"

namespace deltatron::data {

ImageFormat image_format_of(std::span<const uint8_t> b) {
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return ImageFormat::jpeg;
  if (b.size() >= 8 && std::memcmp(b.data(), kPng, 8) == 0) return ImageFormat::png;
  if (b.size() >= 12 && std::memcmp(b.data(), "RIFF", 4) == 0 &&
      std::memcmp(b.data() + 8, "WEBP", 4) == 0)
    return ImageFormat::webp;
  return ImageFormat::unknown;
}

const char* image_format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::jpeg:
      return "JPEG";
    case ImageFormat::png:
      return "PNG";
    case ImageFormat::webp:
      return "WebP";
    case ImageFormat::unknown:
      break;
  }
  return "unknown";
}

ImageRGB8 decode_image(std::span<const uint8_t> bytes, const std::string& name) {
  switch (image_format_of(bytes)) {
    case ImageFormat::jpeg:
      return decode_jpeg(bytes, name);
    case ImageFormat::png:
      return decode_png(bytes, name);
    case ImageFormat::webp:
      return decode_webp(bytes, name);
    case ImageFormat::unknown:
      break;
  }
  if (bytes.empty()) core::fail("image ", name, ": the file is empty");
  core::fail("image ", name, ": not a JPEG, PNG or WebP file (unrecognised first bytes)");
}

ImageRGB8 load_image(const std::string& path, const std::string& where) {
  try {
    DT_CHECK(!std::filesystem::is_directory(path), "image ", path, ": is a directory");
    std::ifstream in(path, std::ios::binary);
    DT_CHECK(in.good(), "image ", path, ": cannot open the file (missing or unreadable)");
    std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in),
                               std::istreambuf_iterator<char>()};
    DT_CHECK(!in.bad(), "image ", path, ": read error");
    return decode_image(bytes, path);
  } catch (const core::Error& e) {
    if (where.empty()) throw;
    core::fail(where, ": ", e.what());
  }
}

}  // namespace deltatron::data
