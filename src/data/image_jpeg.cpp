// JPEG to 8-bit RGB through libjpeg-turbo's classic API, with Pillow's settings.
//
// Pillow decodes with the library defaults (ISLOW integer IDCT, fancy upsampling, no block
// smoothing changes) and lets libjpeg convert YCbCr to RGB; grey stays one channel until
// convert("RGB") replicates it. Four-component files (CMYK, and YCCK, which libjpeg turns into
// CMYK) are read as Adobe-inverted CMYK (Pillow's rawmode "CMYK;I", assumed for every such file)
// and converted as Pillow's CMYK -> RGB does: with nk = 255 - K, R = nk - round(C nk / 255),
// G and B likewise from M and Y, where round(a b / 255) is the integer ((t >> 8) + t) >> 8 with
// t = a b + 128. Pillow refuses a truncated file ("image file is truncated"),
// which libjpeg reports only as the warning JWRN_JPEG_EOF (it then pads with grey): that warning
// is an error here; other warnings (corrupt but decodable data) are ignored, as Pillow does.
//
// libjpeg reports fatal errors through error_exit, which must not return: it longjmps back to
// decode_jpeg's setjmp. Between the setjmp and any longjmp only C frames (libjpeg's) run, and
// every C++ object that lives across it (the output vector, the message buffer) is created
// before the setjmp, so no destructor is skipped.
#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdio>

// jpeglib.h uses size_t and FILE without declaring them (hence cstddef and cstdio above).
#include <jerror.h>
#include <jpeglib.h>

#include "core/error.h"
#include "data/image_codecs.h"

namespace deltatron::data {
namespace {

struct JpegErrors {
  jpeg_error_mgr mgr;  // first member: libjpeg hands back a jpeg_error_mgr*
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrors*>(cinfo->err);
  err->mgr.format_message(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (level -1) arrive here; only a premature end of the data is fatal.
void on_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegErrors*>(cinfo->err);
  if (level < 0 && err->mgr.msg_code == JWRN_JPEG_EOF) {
    err->mgr.format_message(cinfo, err->message);
    std::longjmp(err->jump, 1);
  }
}

// One inverted-CMYK pixel (as Adobe stores it) to RGB, as Pillow's "CMYK;I" unpacking and its
// CMYK -> RGB conversion do (header comment).
void inverted_cmyk_to_rgb(const uint8_t* inverted, uint8_t* rgb) {
  const int nk = inverted[3];  // 255 - K, where K = 255 - stored
  for (int c = 0; c < 3; ++c) {
    const int t = (255 - inverted[c]) * nk + 128;
    rgb[c] = uint8_t(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
  }
}

}  // namespace

ImageRGB8 decode_jpeg(std::span<const uint8_t> bytes, const std::string& name) {
  ImageRGB8 img;
  std::vector<uint8_t> row;
  const char* refusal = nullptr;  // an unsupported variant, reported after the cleanup
  JpegErrors err{};
  jpeg_decompress_struct cinfo{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = on_error;
  err.mgr.emit_message = on_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    core::fail("image ", name, ": corrupt or truncated JPEG (libjpeg: ", err.message, ")");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  const bool grey = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  if (int64_t(cinfo.image_width) * cinfo.image_height > kMaxImagePixels) {
    refusal = "the image has more than 178956970 pixels (Pillow's decompression-bomb limit)";
  } else {
    cinfo.out_color_space = grey ? JCS_GRAYSCALE : cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    img.width = cinfo.output_width;
    img.height = cinfo.output_height;
    img.rgb_HW3.resize(size_t(img.width * img.height * 3));
    row.resize(size_t(img.width) * cinfo.output_components);
    while (cinfo.output_scanline < cinfo.output_height) {
      const int64_t y = cinfo.output_scanline;
      JSAMPROW rows[1] = {row.data()};
      jpeg_read_scanlines(&cinfo, rows, 1);
      uint8_t* out = img.rgb_HW3.data() + y * img.width * 3;
      if (grey) {
        for (int64_t x = 0; x < img.width; ++x)
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = row[x];
      } else if (cmyk) {
        for (int64_t x = 0; x < img.width; ++x)
          inverted_cmyk_to_rgb(row.data() + 4 * x, out + 3 * x);
      } else {
        std::copy(row.begin(), row.end(), out);
      }
    }
    jpeg_finish_decompress(&cinfo);
  }
  jpeg_destroy_decompress(&cinfo);
  DT_CHECK(refusal == nullptr, "image ", name, ": ", refusal);
  return img;
}

}  // namespace deltatron::data
