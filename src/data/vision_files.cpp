// Image files of vision-language samples: read once (identity, hash, grid), re-read for pixels.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include "core/error.h"
#include "data/hash.h"
#include "data/vision_data.h"

namespace deltatron::data {

namespace {

// The whole file, with its size and modification time. Errors name the file.
std::vector<uint8_t> read_file(const std::string& path, ImageRef& ref) {
  DT_CHECK(!std::filesystem::is_directory(path), "image ", path, ": is a directory");
  struct stat st {};
  DT_CHECK(::stat(path.c_str(), &st) == 0, "image ", path,
           ": cannot open the file (missing or unreadable)");
  std::ifstream in(path, std::ios::binary);
  DT_CHECK(in.good(), "image ", path, ": cannot open the file (missing or unreadable)");
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  DT_CHECK(!in.bad(), "image ", path, ": read error");
  ref.size = bytes.size();
  ref.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  const Hash128 h = hash_bytes(bytes.data(), bytes.size(), kImageHashSeed);
  ref.hash[0] = h.lo;
  ref.hash[1] = h.hi;
  return bytes;
}

}  // namespace

LoadedImage load_sample_image(const std::string& data_path, const std::string& source,
                              const ImageProcessorConfig& processor, bool with_pixels) {
  LoadedImage out;
  out.ref.path = source;
  const std::string path = resolve_image_path(data_path, source);
  const std::vector<uint8_t> bytes = read_file(path, out.ref);
  const ImageRGB8 rgb = decode_image(bytes, path);
  if (with_pixels) {
    ImagePatches p = preprocess_image(rgb, processor);
    out.grid_thw[0] = p.grid_t;
    out.grid_thw[1] = p.grid_h;
    out.grid_thw[2] = p.grid_w;
    out.pixel_values = std::move(p.pixel_values_NK);
    return out;
  }
  // The grid only: smart_resize of the size (what preprocess_image would resize to).
  int64_t h = rgb.height, w = rgb.width;
  if (processor.do_resize) {
    std::tie(h, w) = smart_resize(rgb.height, rgb.width, processor.factor(), processor.min_pixels,
                                  processor.max_pixels);
  } else {
    DT_CHECK(h % processor.factor() == 0 && w % processor.factor() == 0, "image ", path, ": ", w,
             " x ", h, " is not a multiple of ", processor.factor(), " and do_resize is off");
  }
  out.grid_thw[0] = 1;
  out.grid_thw[1] = h / processor.patch_size;
  out.grid_thw[2] = w / processor.patch_size;
  return out;
}

void load_pixel_values(Sample& s, const std::string& data_path,
                       const ImageProcessorConfig& processor) {
  s.pixel_values.clear();
  DT_CHECK(s.image_grid_thw.size() == 3 * s.images.size(), "load_pixel_values: ", s.images.size(),
           " images but ", s.image_grid_thw.size() / 3, " grids");
  for (size_t i = 0; i < s.images.size(); ++i) {
    const ImageRef& want = s.images[i];
    LoadedImage got = load_sample_image(data_path, want.path, processor, true);
    const std::string path = resolve_image_path(data_path, want.path);
    DT_CHECK(got.ref.hash[0] == want.hash[0] && got.ref.hash[1] == want.hash[1], "image ", path,
             ": the file changed after the dataset was read (", want.size, " -> ", got.ref.size,
             " bytes); load the dataset again to rebuild its cache");
    const int32_t* g = &s.image_grid_thw[3 * i];
    DT_CHECK(got.grid_thw[0] == g[0] && got.grid_thw[1] == g[1] && got.grid_thw[2] == g[2],
             "image ", path, ": grid ", got.grid_thw[0], "x", got.grid_thw[1], "x", got.grid_thw[2],
             " but the sample was built for ", g[0], "x", g[1], "x", g[2]);
    s.pixel_values.insert(s.pixel_values.end(), got.pixel_values.begin(), got.pixel_values.end());
  }
}

}  // namespace deltatron::data
