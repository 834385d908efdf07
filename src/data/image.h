// Images as 8-bit RGB and how image files become them: JPEG, PNG and WebP decoded the way
// Pillow's `Image.open(path).convert("RGB")` does (docs/vision.md).
//
// What "the way Pillow does" means, per input (each checked byte for byte against Pillow 13 by
// tests/test_image.cpp):
//   JPEG   libjpeg-turbo with its defaults (ISLOW IDCT, fancy upsampling), YCbCr -> RGB by the
//          library; grey expanded to R = G = B; CMYK / YCCK read as Adobe-inverted CMYK and
//          converted with Pillow's CMYK -> RGB formula (image_jpeg.cpp).
//   PNG    libpng without gamma or sBIT handling; palette looked up; grey of 1/2/4 bits scaled
//          to 8 (v * 255 / (2^bits - 1)); palette indices past the palette give black; 16-bit
//          colour / grey+alpha keeps the high byte, but 16-bit grey clamps to 255 (Pillow opens it
//          as I;16 and its I;16 -> RGB conversion clips, so 256..65535 become 255); alpha and tRNS
//          are dropped, transparent pixels keep their stored colour (Pillow's convert("RGB"), also
//          transformers 5.17's convert_to_rgb).
//   WebP   libwebp, the first (only) frame; alpha dropped as above. Animated WebP is refused.
// The format comes from the file's first bytes, never from its name. EXIF orientation is not
// applied (neither Pillow's open/convert nor transformers' processors apply it). Images above
// 178956970 pixels are refused, as Pillow refuses them (its decompression-bomb error).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace deltatron::data {

// An 8-bit RGB image, row-major, channels interleaved: rgb_HW3[(y * width + x) * 3 + c].
struct ImageRGB8 {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb_HW3;
};

enum class ImageFormat { unknown, jpeg, png, webp };

// The format the first bytes announce: JPEG FF D8 FF, PNG's 8-byte signature, WebP
// "RIFF" <size> "WEBP". Anything else (or too short) is unknown.
ImageFormat image_format_of(std::span<const uint8_t> bytes);
const char* image_format_name(ImageFormat format);

// Decodes the bytes of a whole image file. `name` only labels error messages. Throws
// core::Error ("image NAME: ...") for an unknown format, a corrupt or truncated file, or an
// unsupported variant; never crashes on bad input.
ImageRGB8 decode_image(std::span<const uint8_t> bytes, const std::string& name);

// Reads and decodes the file at `path`. A missing or unreadable file is a core::Error naming
// it; `where` (e.g. "train.jsonl:12"), when given, prefixes every message.
ImageRGB8 load_image(const std::string& path, const std::string& where = "");

}  // namespace deltatron::data
