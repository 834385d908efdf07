// Dataset loading: content-keyed cache lookup, parallel chunked tokenisation, atomic cache write.
#include "data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "data/hash.h"
#include "data/tokenizer.h"
#include "data/vision_data.h"

namespace deltatron::data {

static_assert(std::endian::native == std::endian::little, "the dataset cache is little-endian");

namespace {

// Bump whenever the cache layout or the meaning of any stored value changes (tokenisation rules,
// templates, skip rules): old caches then miss instead of being misread.
constexpr uint32_t kCacheVersion = 3;  // 2: chat rendered by the checkpoints' templates; 3: images
constexpr char kMagic[8] = {'D', 'T', 'D', 'S', 'C', 'A', 'C', 'H'};
constexpr uint32_t kFlagExplicitLabels = 1;

// ---- files ------------------------------------------------------------------------------

// A read-only private mapping of a whole file (empty files map to nothing).
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path, std::string& why) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      why = std::strerror(errno);
      return nullptr;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      why = std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
    auto m = std::shared_ptr<MappedFile>(new MappedFile);
    m->size_ = static_cast<size_t>(st.st_size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        why = std::strerror(errno);
        ::close(fd);
        return nullptr;
      }
      m->data_ = p;
    }
    ::close(fd);
    return m;
  }
  ~MappedFile() {
    if (data_) ::munmap(data_, size_);
  }
  const uint8_t* data() const { return static_cast<const uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Writes bytes to `path` atomically: a unique temporary file in the same directory, fsync,
// rename. Returns "" or the reason it failed (the temporary file is removed).
std::string write_atomically(const std::string& path, const void* data, size_t n) {
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." +
      hex64(static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return tmp + ": " + std::strerror(errno);
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  std::string err;
  while (done < n) {
    ssize_t w = ::write(fd, p + done, std::min<size_t>(n - done, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err = tmp + ": write failed: " + std::strerror(errno);
      break;
    }
    done += static_cast<size_t>(w);
  }
  if (err.empty() && ::fsync(fd) != 0) err = tmp + ": fsync failed: " + std::strerror(errno);
  if (::close(fd) != 0 && err.empty()) err = tmp + ": close failed: " + std::strerror(errno);
  if (err.empty() && ::rename(tmp.c_str(), path.c_str()) != 0)
    err = path + ": rename failed: " + std::strerror(errno);
  if (!err.empty()) ::unlink(tmp.c_str());
  return err;
}

// ---- cache image --------------------------------------------------------------------------

struct CacheHeader {
  char magic[8];
  uint32_t version, flags;
  uint64_t key[2];
  uint64_t checksum[2];  // hash of the whole image with this field zeroed
  uint64_t num_samples, num_tokens, note_bytes;
  int64_t lines, blank_lines, samples, tokens, label_tokens;
  int64_t skipped[3];
  uint64_t num_images, path_bytes;  // image files of the samples, and their paths' total length
};
static_assert(kNumSkipReasons == 3, "CacheHeader stores 3 skip counters: bump kCacheVersion");
static_assert(sizeof(CacheHeader) % 8 == 0);

}  // namespace

// One image file of a sample (the pixels are recomputed from it when the sample is taken).
struct DatasetImageRecord {
  int32_t grid_thw[3];
  uint32_t reserved;
  uint64_t size;
  int64_t mtime_ns;
  uint64_t hash[2];
  uint64_t path_offset, path_bytes;  // into the paths section
};
static_assert(sizeof(DatasetImageRecord) == 64);

namespace {
using ImageRecord = DatasetImageRecord;

size_t words(size_t bytes) { return (bytes + 7) / 8; }

// Byte offsets of the sections after the header, all 8-aligned.
struct Layout {
  size_t note, offsets, lines, tokens, labels, image_offsets, images, paths, total;
  explicit Layout(const CacheHeader& h) {
    const uint64_t S = h.num_samples, N = h.num_tokens;
    note = sizeof(CacheHeader);
    offsets = note + 8 * words(h.note_bytes);
    lines = offsets + 8 * (S + 1);
    tokens = lines + 8 * S;
    labels = tokens + 8 * words(4 * N);
    image_offsets =
        labels + ((h.flags & kFlagExplicitLabels) ? 8 * words(4 * N) : 8 * ((N + 63) / 64));
    images = image_offsets + (h.num_images ? 8 * (S + 1) : 0);
    paths = images + sizeof(ImageRecord) * h.num_images;
    total = paths + 8 * words(h.path_bytes);
  }
};

Hash128 image_checksum(const uint8_t* data, size_t n) {
  CacheHeader h;
  std::memcpy(&h, data, sizeof h);
  h.checksum[0] = h.checksum[1] = 0;
  Hash128 a = hash_bytes(&h, sizeof h, 1);
  Hash128 b = hash_bytes(data + sizeof h, n - sizeof h, 2);
  return Hash128{hash_mix(a.lo ^ b.lo), hash_mix(a.hi + b.hi)};
}

// Everything a build collects before it becomes an image.
struct Flat {
  std::vector<uint32_t> tokens;
  std::vector<int32_t> labels;
  std::vector<uint64_t> offsets{0}, lines;
  DataStats stats;
  std::vector<uint64_t> image_offsets{0};  // images of sample s: [image_offsets[s], [s+1])
  std::vector<ImageRecord> images;
  std::string paths;
};

std::shared_ptr<std::vector<uint64_t>> make_image(const Flat& f, const uint64_t key[2]) {
  CacheHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kCacheVersion;
  bool explicit_labels = false;
  for (size_t t = 0; t < f.tokens.size() && !explicit_labels; ++t)
    explicit_labels =
        f.labels[t] != kIgnoreIndex && f.labels[t] != static_cast<int32_t>(f.tokens[t]);
  h.flags = explicit_labels ? kFlagExplicitLabels : 0;
  h.key[0] = key[0];
  h.key[1] = key[1];
  h.num_samples = f.lines.size();
  h.num_tokens = f.tokens.size();
  h.note_bytes = f.stats.first_bad_line.size();
  const DataStats& s = f.stats;
  h.lines = s.lines, h.blank_lines = s.blank_lines, h.samples = s.samples, h.tokens = s.tokens;
  h.label_tokens = s.label_tokens;
  for (int r = 0; r < kNumSkipReasons; ++r) h.skipped[r] = s.skipped[r];
  h.num_images = f.images.size();
  h.path_bytes = f.paths.size();

  const Layout L(h);
  auto img = std::make_shared<std::vector<uint64_t>>(L.total / 8, 0);
  auto* b = reinterpret_cast<uint8_t*>(img->data());
  std::memcpy(b + L.note, s.first_bad_line.data(), h.note_bytes);
  std::memcpy(b + L.offsets, f.offsets.data(), 8 * f.offsets.size());
  std::memcpy(b + L.lines, f.lines.data(), 8 * f.lines.size());
  std::memcpy(b + L.tokens, f.tokens.data(), 4 * f.tokens.size());
  if (explicit_labels) {
    std::memcpy(b + L.labels, f.labels.data(), 4 * f.labels.size());
  } else {
    auto* bits = reinterpret_cast<uint64_t*>(b + L.labels);
    for (size_t t = 0; t < f.tokens.size(); ++t)
      if (f.labels[t] != kIgnoreIndex) bits[t / 64] |= uint64_t(1) << (t % 64);
  }
  if (h.num_images) {
    std::memcpy(b + L.image_offsets, f.image_offsets.data(), 8 * f.image_offsets.size());
    std::memcpy(b + L.images, f.images.data(), sizeof(ImageRecord) * f.images.size());
    std::memcpy(b + L.paths, f.paths.data(), f.paths.size());
  }
  std::memcpy(b, &h, sizeof h);
  Hash128 c = image_checksum(b, L.total);
  h.checksum[0] = c.lo;
  h.checksum[1] = c.hi;
  std::memcpy(b, &h, sizeof h);
  return img;
}

// ---- progress -----------------------------------------------------------------------------

class Progress {
 public:
  Progress(bool on, std::string name, size_t total)
      : on_(on),
        tty_(on && ::isatty(STDERR_FILENO)),
        name_(std::move(name)),
        total_(total),
        start_(clock::now()),
        last_(start_) {}
  void update(size_t done, int64_t lines, bool final = false) {
    if (!on_) return;
    const auto now = clock::now();
    const double since_last = std::chrono::duration<double>(now - last_).count();
    if (!final && since_last < (tty_ ? 0.2 : 10.0)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double frac = total_ ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
    const double mbps = secs > 0 ? static_cast<double>(done) / 1e6 / secs : 0.0;
    if (tty_) {
      const int width = 30, fill = static_cast<int>(frac * width);
      std::fprintf(stderr, "\rtokenising %s [%s%s] %3d%% %lld lines %.1f MB/s%s", name_.c_str(),
                   std::string(fill, '=').c_str(), std::string(width - fill, ' ').c_str(),
                   static_cast<int>(frac * 100), static_cast<long long>(lines), mbps,
                   final ? "\n" : "");
    } else {
      std::fprintf(stderr, "tokenising %s: %d%% (%lld lines, %.1f MB/s, %.0f s)\n", name_.c_str(),
                   static_cast<int>(frac * 100), static_cast<long long>(lines), mbps, secs);
    }
    std::fflush(stderr);
  }

 private:
  using clock = std::chrono::steady_clock;
  bool on_, tty_;
  std::string name_;
  size_t total_;
  clock::time_point start_, last_;
};

}  // namespace

// ---- Dataset ------------------------------------------------------------------------------

bool Dataset::attach(const void* data, size_t size, const uint64_t key[2], std::string& why) {
  auto reject = [&](std::string reason) {
    why = std::move(reason);
    return false;
  };
  const auto* b = static_cast<const uint8_t*>(data);
  CacheHeader h;
  if (size < sizeof h) return reject("truncated header (" + std::to_string(size) + " bytes)");
  std::memcpy(&h, b, sizeof h);
  if (std::memcmp(h.magic, kMagic, 8) != 0) return reject("not a dataset cache");
  if (h.version != kCacheVersion)
    return reject("cache format version " + std::to_string(h.version));
  if (h.key[0] != key[0] || h.key[1] != key[1]) return reject("key mismatch");
  if (h.num_samples > (uint64_t(1) << 40) || h.num_tokens > (uint64_t(1) << 48) ||
      h.note_bytes > (uint64_t(1) << 20))
    return reject("implausible header");
  const Layout L(h);
  if (L.total != size)
    return reject("size " + std::to_string(size) + " bytes, header implies " +
                  std::to_string(L.total));
  const Hash128 c = image_checksum(b, size);
  if (c.lo != h.checksum[0] || c.hi != h.checksum[1]) return reject("checksum mismatch");

  offsets_ = reinterpret_cast<const uint64_t*>(b + L.offsets);
  lines_ = reinterpret_cast<const uint64_t*>(b + L.lines);
  tokens_ = reinterpret_cast<const uint32_t*>(b + L.tokens);
  label_bits_ = nullptr;
  labels_ = nullptr;
  if (h.flags & kFlagExplicitLabels)
    labels_ = reinterpret_cast<const int32_t*>(b + L.labels);
  else
    label_bits_ = reinterpret_cast<const uint64_t*>(b + L.labels);
  if (offsets_[0] != 0 || offsets_[h.num_samples] != h.num_tokens)
    return reject("offsets do not cover the tokens");
  image_offsets_ = nullptr;
  images_ = nullptr;
  paths_ = nullptr;
  num_images_ = static_cast<int64_t>(h.num_images);
  if (h.num_images) {
    image_offsets_ = reinterpret_cast<const uint64_t*>(b + L.image_offsets);
    images_ = reinterpret_cast<const ImageRecord*>(b + L.images);
    paths_ = reinterpret_cast<const char*>(b + L.paths);
    if (image_offsets_[0] != 0 || image_offsets_[h.num_samples] != h.num_images)
      return reject("image offsets do not cover the images");
    for (uint64_t k = 0; k < h.num_images; ++k)
      if (images_[k].path_offset + images_[k].path_bytes > h.path_bytes)
        return reject("image path outside the paths section");
  }
  num_samples_ = static_cast<int64_t>(h.num_samples);
  num_tokens_ = static_cast<int64_t>(h.num_tokens);
  stats_ = DataStats{};
  stats_.lines = h.lines, stats_.blank_lines = h.blank_lines, stats_.samples = h.samples;
  stats_.tokens = h.tokens, stats_.label_tokens = h.label_tokens;
  for (int r = 0; r < kNumSkipReasons; ++r) stats_.skipped[r] = h.skipped[r];
  stats_.first_bad_line.assign(reinterpret_cast<const char*>(b + L.note), h.note_bytes);
  return true;
}

std::vector<int64_t> Dataset::lengths() const {
  std::vector<int64_t> out(num_samples_);
  for (int64_t i = 0; i < num_samples_; ++i) out[i] = length(i);
  return out;
}

int64_t Dataset::num_images(int64_t i) const {
  return image_offsets_ ? static_cast<int64_t>(image_offsets_[i + 1] - image_offsets_[i]) : 0;
}

int64_t Dataset::num_patches(int64_t i) const {
  int64_t n = 0;
  for (int64_t k = image_offsets_ ? int64_t(image_offsets_[i]) : 0;
       image_offsets_ && k < int64_t(image_offsets_[i + 1]); ++k)
    n += int64_t(images_[k].grid_thw[0]) * images_[k].grid_thw[1] * images_[k].grid_thw[2];
  return n;
}

ImageRef Dataset::image_ref(int64_t k) const {
  const ImageRecord& r = images_[k];
  ImageRef ref;
  ref.path.assign(paths_ + r.path_offset, r.path_bytes);
  ref.size = r.size;
  ref.mtime_ns = r.mtime_ns;
  ref.hash[0] = r.hash[0];
  ref.hash[1] = r.hash[1];
  return ref;
}

Sample Dataset::sample(int64_t i, int64_t max_len, bool pixels) const {
  DT_CHECK(i >= 0 && i < num_samples_, "sample index ", i, " outside [0, ", num_samples_, ")");
  const uint64_t b = offsets_[i];
  const bool vl = num_images(i) > 0;
  int64_t n = length(i);
  if (max_len >= 0 && !vl) n = std::min(n, max_len);  // VL: cut below, never inside an image
  Sample s;
  s.input_ids.resize(n);
  s.labels.resize(n);
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t k = b + static_cast<uint64_t>(t);
    s.input_ids[t] = static_cast<int32_t>(tokens_[k]);
    if (labels_)
      s.labels[t] = labels_[k];
    else
      s.labels[t] = (label_bits_[k / 64] >> (k % 64)) & 1 ? s.input_ids[t] : kIgnoreIndex;
  }
  if (!vl) return s;
  for (uint64_t k = image_offsets_[i]; k < image_offsets_[i + 1]; ++k) {
    s.image_grid_thw.insert(s.image_grid_thw.end(), images_[k].grid_thw, images_[k].grid_thw + 3);
    s.images.push_back(image_ref(static_cast<int64_t>(k)));
  }
  const int64_t merge = vision_.processor.merge_size;
  s.position_ids = mrope_positions(s.input_ids, s.image_grid_thw, vision_ids_.image_pad, merge);
  truncate_sample(s, max_len, vision_ids_, merge);
  if (pixels) {
    try {
      load_pixel_values(s, path_, vision_.processor);
    } catch (const core::Error& e) {
      core::fail(where(i), ": ", e.what());
    }
  }
  return s;
}

std::string Dataset::where(int64_t i) const { return path_ + ":" + std::to_string(line(i)); }

bool Dataset::images_unchanged(std::string& why) const {
  // Size and modification time as recorded: unchanged. Otherwise the content decides (a copy or
  // a touch keeps the hash).
  std::vector<std::string> problem(static_cast<size_t>(num_images_));
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t k = 0; k < num_images_; ++k) {
    const ImageRecord& r = images_[k];
    const std::string file =
        resolve_image_path(path_, std::string(paths_ + r.path_offset, r.path_bytes));
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
      problem[k] = "image " + file + " is missing";
      continue;
    }
    const int64_t mtime = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    if (static_cast<uint64_t>(st.st_size) == r.size && mtime == r.mtime_ns) continue;
    std::string why_open;
    std::shared_ptr<MappedFile> m = MappedFile::open(file, why_open);
    if (!m) {
      problem[k] = "image " + file + " is unreadable (" + why_open + ")";
      continue;
    }
    const Hash128 h = hash_bytes(m->data(), m->size(), kImageHashSeed);
    if (h.lo != r.hash[0] || h.hi != r.hash[1]) problem[k] = "image " + file + " changed";
  }
  for (const std::string& p : problem)
    if (!p.empty()) {
      why = p;
      return false;
    }
  return true;
}

void Dataset::set_content_key(const Hash128& kh) {
  // The options' key, extended by the content of every image (equal keys: equal samples, pixels
  // included).
  Hash128 k = kh;
  for (int64_t i = 0; i < num_images_; ++i) {
    k.lo = hash_mix(k.lo ^ images_[i].hash[0]) + k.hi;
    k.hi = hash_mix(k.hi + images_[i].hash[1]) ^ k.lo;
  }
  content_key_ = hex64(k.lo) + hex64(k.hi);
}

Dataset Dataset::load(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt) {
  namespace fs = std::filesystem;
  DT_CHECK(opt.chunk_lines >= 1, "chunk_lines must be >= 1, got ", opt.chunk_lines);
  std::string why;
  std::shared_ptr<MappedFile> data = MappedFile::open(path, why);
  DT_CHECK(data, path, ": cannot open data file (", why, ")");
  const FormatContext ctx = FormatContext::make(tok, opt.format);

  // Cache key: everything the tokenised result depends on.
  const Hash128 content = hash_bytes(data->data(), data->size());
  const FormatOptions& f = opt.format;
  std::ostringstream k;
  k << "deltatron dataset cache v" << kCacheVersion << "|data " << hex64(content.lo)
    << hex64(content.hi) << ":" << data->size() << "|tokenizer " << tok.content_hash() << "|format "
    << static_cast<int>(f.format) << "|loss_on " << static_cast<int>(f.chat.loss_on) << "|chat "
    << chat_options_key(f.chat) << "|no_chat " << f.no_chat_template << "|eos " << ctx.eos_id
    << "|append_eos " << f.append_eos << "|skip_bad_lines " << f.skip_bad_lines << "|vision "
    << f.vision.key() << "|vision_ids " << ctx.vision_ids.image_pad << ","
    << ctx.vision_ids.vision_start << "," << ctx.vision_ids.vision_end;
  const std::string key_text = k.str();
  const Hash128 kh = hash_bytes(key_text.data(), key_text.size(), 7);
  const uint64_t key[2] = {kh.lo, kh.hi};

  Dataset ds;
  ds.path_ = path;
  ds.vision_ = f.vision;
  ds.vision_ids_ = ctx.vision_ids;
  if (opt.use_cache) {
    const fs::path dir = opt.cache_dir.empty()
                             ? fs::absolute(fs::path(path)).parent_path() / ".deltatron-cache"
                             : fs::path(opt.cache_dir);
    ds.cache_path_ =
        (dir / (fs::path(path).filename().string() + "." + hex64(kh.lo) + ".dtcache")).string();
    std::error_code ec;
    if (fs::exists(ds.cache_path_, ec)) {
      std::shared_ptr<MappedFile> m = MappedFile::open(ds.cache_path_, why);
      if (m && ds.attach(m->data(), m->size(), key, why) && ds.images_unchanged(why)) {
        ds.storage_ = m;
        ds.set_content_key(kh);
        ds.from_cache_ = true;
        if (opt.progress)
          std::fprintf(stderr, "data %s: %s (cache %s)\n", path.c_str(),
                       ds.stats_.summary().c_str(), ds.cache_path_.c_str());
        return ds;
      }
      std::fprintf(stderr, "warning: dataset cache %s is invalid (%s); rebuilding\n",
                   ds.cache_path_.c_str(), why.c_str());
    }
  }

  // Build: chunks of lines, each parsed in parallel and tokenised with one encode_batch call.
  // Images are decoded (checked, sized) but their pixels are left to sample().
  FormatOptions build_format = opt.format;
  build_format.load_pixels = false;
  Flat flat;
  Progress progress(opt.progress, fs::path(path).filename().string(), data->size());
  const char* p = reinterpret_cast<const char*>(data->data());
  const size_t n = data->size();
  size_t pos = 0;
  int64_t line_no = 1;
  std::vector<std::string_view> lines;
  std::vector<Sample> samples;
  std::vector<int64_t> sample_lines;
  while (pos < n) {
    lines.clear();
    const int64_t first = line_no;
    while (pos < n && static_cast<int64_t>(lines.size()) < opt.chunk_lines) {
      const void* nl = std::memchr(p + pos, '\n', n - pos);
      const size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - p) : n;
      lines.emplace_back(p + pos, end - pos);
      pos = end + 1;
      ++line_no;
    }
    samples.clear();
    sample_lines.clear();
    convert_lines(lines, first, path, tok, build_format, ctx, samples, sample_lines, flat.stats);
    for (size_t i = 0; i < samples.size(); ++i) {
      const Sample& s = samples[i];
      for (size_t k = 0; k < s.images.size(); ++k) {
        const ImageRef& r = s.images[k];
        ImageRecord rec{};
        std::copy_n(&s.image_grid_thw[3 * k], 3, rec.grid_thw);
        rec.size = r.size;
        rec.mtime_ns = r.mtime_ns;
        rec.hash[0] = r.hash[0];
        rec.hash[1] = r.hash[1];
        rec.path_offset = flat.paths.size();
        rec.path_bytes = r.path.size();
        flat.paths += r.path;
        flat.images.push_back(rec);
      }
      flat.image_offsets.push_back(flat.images.size());
      flat.tokens.insert(flat.tokens.end(), s.input_ids.begin(), s.input_ids.end());
      flat.labels.insert(flat.labels.end(), s.labels.begin(), s.labels.end());
      flat.offsets.push_back(flat.tokens.size());
      flat.lines.push_back(static_cast<uint64_t>(sample_lines[i]));
    }
    progress.update(std::min(pos, n), line_no - 1);
  }
  progress.update(n, line_no - 1, true);
  DT_CHECK(!flat.lines.empty(), path, ": no samples (", flat.stats.summary(), ")");

  std::shared_ptr<std::vector<uint64_t>> img = make_image(flat, key);
  const size_t bytes = 8 * img->size();
  DT_CHECK(ds.attach(img->data(), bytes, key, why), "dataset cache image invalid: ", why);
  ds.storage_ = img;
  ds.set_content_key(kh);
  if (opt.use_cache) {
    std::error_code ec;
    fs::create_directories(fs::path(ds.cache_path_).parent_path(), ec);
    std::string err = ec ? ec.message() : write_atomically(ds.cache_path_, img->data(), bytes);
    if (!err.empty()) {
      std::fprintf(stderr, "warning: cannot write dataset cache %s (%s)\n", ds.cache_path_.c_str(),
                   err.c_str());
      ds.cache_path_.clear();
    }
  }
  if (opt.progress)
    std::fprintf(stderr, "data %s: %s\n", path.c_str(), ds.stats_.summary().c_str());
  return ds;
}

Pack make_dataset_pack(const Dataset& ds, const std::vector<int64_t>& batch, int64_t align,
                       int64_t max_len) {
  // Samples with images read and preprocess their image files: in parallel.
  const int64_t n = static_cast<int64_t>(batch.size());
  std::vector<Sample> samples(batch.size());
  std::vector<std::string> errors(batch.size());
  bool images = false;
  for (int64_t i : batch) images = images || ds.num_images(i) > 0;
#pragma omp parallel for schedule(dynamic, 1) if (images)
  for (int64_t k = 0; k < n; ++k) {
    try {
      samples[k] = ds.sample(batch[k], max_len);
    } catch (const std::exception& e) {  // never let it escape the region
      errors[k] = e.what();
    }
  }
  for (const std::string& e : errors)
    if (!e.empty()) throw core::Error(e);
  std::vector<const Sample*> ptrs;
  for (const Sample& s : samples) ptrs.push_back(&s);
  return make_pack(ptrs, batch, align);
}

}  // namespace deltatron::data
