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
#include "data/tokenizer.h"

namespace deltatron::data {

static_assert(std::endian::native == std::endian::little, "the dataset cache is little-endian");

namespace {

// Bump whenever the cache layout or the meaning of any stored value changes (tokenisation rules,
// templates, skip rules): old caches then miss instead of being misread.
constexpr uint32_t kCacheVersion = 2;  // 2: chat rendered by the checkpoints' templates
constexpr char kMagic[8] = {'D', 'T', 'D', 'S', 'C', 'A', 'C', 'H'};
constexpr uint32_t kFlagExplicitLabels = 1;

// ---- hashing: a 128-bit non-cryptographic hash, parallel over 1 MiB blocks ----------------

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr size_t kBlock = size_t(1) << 20;

uint64_t fmix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

struct Hash128 {
  uint64_t lo = 0, hi = 0;
};

// One block: four lanes of acc = rotl(acc + w * P2, 31) * P1 over 8-byte words (word k goes to
// lane k % 4), a zero-padded tail, then the lanes folded into two words with the block length.
Hash128 hash_block(const uint8_t* p, size_t n, uint64_t seed) {
  uint64_t acc[4] = {seed + kP1, seed ^ kP2, seed + 0x165667B19E3779F9ULL, seed - kP1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      acc[l] = std::rotl(acc[l] + w * kP2, 31) * kP1;
    }
  for (int l = 0; i < n; ++l, i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, std::min<size_t>(8, n - i));
    acc[l] = std::rotl(acc[l] + w * kP2, 31) * kP1;
  }
  // Both output words depend on all four lanes.
  const uint64_t a = fmix(acc[0] ^ std::rotl(acc[2], 31)), b = fmix(acc[1] ^ std::rotl(acc[3], 27));
  return Hash128{fmix((a + b) ^ n), fmix(a ^ std::rotl(b, 32) ^ ~n)};
}

Hash128 hash_bytes(const void* data, size_t n, uint64_t seed = 0) {
  const auto* p = static_cast<const uint8_t*>(data);
  const int64_t nb = static_cast<int64_t>((n + kBlock - 1) / kBlock);
  std::vector<Hash128> blocks(nb);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const size_t off = static_cast<size_t>(b) * kBlock;
    blocks[b] = hash_block(p + off, std::min(kBlock, n - off), seed + static_cast<uint64_t>(b));
  }
  Hash128 h{fmix(seed ^ n ^ kP1), fmix(seed + n + kP2)};
  for (const Hash128& b : blocks) {
    h.lo = fmix(h.lo ^ b.lo) + h.hi;
    h.hi = fmix(h.hi + b.hi) ^ h.lo;
  }
  return h;
}

std::string hex(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

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
      hex(static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
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
};
static_assert(kNumSkipReasons == 3, "CacheHeader stores 3 skip counters: bump kCacheVersion");
static_assert(sizeof(CacheHeader) % 8 == 0);

size_t words(size_t bytes) { return (bytes + 7) / 8; }

// Byte offsets of the sections after the header, all 8-aligned.
struct Layout {
  size_t note, offsets, lines, tokens, labels, total;
  explicit Layout(const CacheHeader& h) {
    const uint64_t S = h.num_samples, N = h.num_tokens;
    note = sizeof(CacheHeader);
    offsets = note + 8 * words(h.note_bytes);
    lines = offsets + 8 * (S + 1);
    tokens = lines + 8 * S;
    labels = tokens + 8 * words(4 * N);
    total = labels + ((h.flags & kFlagExplicitLabels) ? 8 * words(4 * N) : 8 * ((N + 63) / 64));
  }
};

Hash128 image_checksum(const uint8_t* data, size_t n) {
  CacheHeader h;
  std::memcpy(&h, data, sizeof h);
  h.checksum[0] = h.checksum[1] = 0;
  Hash128 a = hash_bytes(&h, sizeof h, 1);
  Hash128 b = hash_bytes(data + sizeof h, n - sizeof h, 2);
  return Hash128{fmix(a.lo ^ b.lo), fmix(a.hi + b.hi)};
}

// Everything a build collects before it becomes an image.
struct Flat {
  std::vector<uint32_t> tokens;
  std::vector<int32_t> labels;
  std::vector<uint64_t> offsets{0}, lines;
  DataStats stats;
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

Sample Dataset::sample(int64_t i, int64_t max_len) const {
  DT_CHECK(i >= 0 && i < num_samples_, "sample index ", i, " outside [0, ", num_samples_, ")");
  const uint64_t b = offsets_[i];
  int64_t n = length(i);
  if (max_len >= 0) n = std::min(n, max_len);
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
  return s;
}

std::string Dataset::where(int64_t i) const { return path_ + ":" + std::to_string(line(i)); }

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
  k << "deltatron dataset cache v" << kCacheVersion << "|data " << hex(content.lo)
    << hex(content.hi) << ":" << data->size() << "|tokenizer " << tok.content_hash() << "|format "
    << static_cast<int>(f.format) << "|loss_on " << static_cast<int>(f.chat.loss_on) << "|chat "
    << chat_options_key(f.chat) << "|no_chat " << f.no_chat_template << "|eos " << ctx.eos_id
    << "|append_eos " << f.append_eos << "|skip_bad_lines " << f.skip_bad_lines;
  const std::string key_text = k.str();
  const Hash128 kh = hash_bytes(key_text.data(), key_text.size(), 7);
  const uint64_t key[2] = {kh.lo, kh.hi};

  Dataset ds;
  ds.path_ = path;
  ds.content_key_ = hex(kh.lo) + hex(kh.hi);
  if (opt.use_cache) {
    const fs::path dir = opt.cache_dir.empty()
                             ? fs::absolute(fs::path(path)).parent_path() / ".deltatron-cache"
                             : fs::path(opt.cache_dir);
    ds.cache_path_ =
        (dir / (fs::path(path).filename().string() + "." + hex(kh.lo) + ".dtcache")).string();
    std::error_code ec;
    if (fs::exists(ds.cache_path_, ec)) {
      std::shared_ptr<MappedFile> m = MappedFile::open(ds.cache_path_, why);
      if (m && ds.attach(m->data(), m->size(), key, why)) {
        ds.storage_ = m;
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
    convert_lines(lines, first, path, tok, opt.format, ctx, samples, sample_lines, flat.stats);
    for (size_t i = 0; i < samples.size(); ++i) {
      const Sample& s = samples[i];
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
  std::vector<Sample> samples;
  samples.reserve(batch.size());
  for (int64_t i : batch) samples.push_back(ds.sample(i, max_len));
  std::vector<const Sample*> ptrs;
  for (const Sample& s : samples) ptrs.push_back(&s);
  return make_pack(ptrs, batch, align);
}

}  // namespace deltatron::data
