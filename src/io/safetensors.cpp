// safetensors reader (mmap, validated header), writer (atomic, sorted, padded) and sharded forms.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/file_util.h"

namespace deltatron::io {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// dtypes and scalar conversions

namespace {

const std::map<std::string, int64_t>& dtype_table() {
  static const std::map<std::string, int64_t> t = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8},     {"C64", 8}};
  return t;
}

// One line even when a library message spans several.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// numel * elem with overflow detection; false on overflow.
bool checked_bytes(const core::Shape& shape, int64_t elem, uint64_t& out) {
  uint64_t n = static_cast<uint64_t>(elem);
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  out = n;
  return true;
}

}  // namespace

bool dtype_known(const std::string& dtype) { return dtype_table().count(dtype) != 0; }

int64_t dtype_size(const std::string& dtype) {
  auto it = dtype_table().find(dtype);
  if (it == dtype_table().end()) core::fail("unknown safetensors dtype '", dtype, "'");
  return it->second;
}

bool dtype_is_float(const std::string& dtype) {
  return dtype == "F32" || dtype == "BF16" || dtype == "F16";
}

float bf16_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // NaN
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest with ties to even; a carry out of
  // the mantissa bumps the exponent, which is exactly the rounded result (up to +inf).
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) {  // zero or subnormal: m * 2^-24
    float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));        // rebias 15 -> 127
}

uint16_t float_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u)  // inf, or NaN kept quiet with its top payload bits
    return sign | 0x7C00u | (x > 0x7F800000u ? 0x0200u | ((x >> 13) & 0x3FFu) : 0u);
  // 65520 = 0x477FF000 is halfway between 65504 (largest finite, odd mantissa) and 2^16, so it
  // and everything above round to inf.
  if (x >= 0x477FF000u) return sign | 0x7C00u;
  const uint32_t e = x >> 23;
  if (e < 113) {               // below 2^-14: a half subnormal, q = round(value / 2^-24)
    if (e < 102) return sign;  // below 2^-25: rounds to zero
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;  // value = m * 2^(e-150)
    const uint32_t shift = 126 - e;                  // value / 2^-24 = m >> shift, in [14, 24]
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t q = ((e - 112u) << 10) | ((x >> 13) & 0x3FFu);
  const uint32_t rem = x & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;  // a carry bumps the exponent
  return static_cast<uint16_t>(sign | q);
}

// ---------------------------------------------------------------------------------------------
// Reader

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) core::fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    core::fail(path, ": cannot stat: ", std::strerror(e));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    core::fail(path, ": file is ", size_, " bytes, shorter than the 8-byte header length");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (p == MAP_FAILED) core::fail(path, ": mmap failed: ", std::strerror(map_errno));
  map_ = static_cast<const uint8_t*>(p);

  try {
    uint64_t n = 0;
    std::memcpy(&n, map_, 8);
    if (n > size_ - 8)
      core::fail(path, ": header length ", n, " runs past the end of the file (", size_, " bytes)");
    data_start_ = 8 + static_cast<size_t>(n);
    const uint64_t data_size = size_ - data_start_;

    json h;
    try {
      h = json::parse(map_ + 8, map_ + data_start_);
    } catch (const json::exception& e) {
      core::fail(path, ": bad JSON header: ", one_line(e.what()));
    }
    if (!h.is_object()) core::fail(path, ": header is not a JSON object");

    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) core::fail(path, ": __metadata__ is not a JSON object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string())
            core::fail(path, ": __metadata__ value for '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = path + ": tensor '" + name + "'";
      if (!v.is_object()) core::fail(where, ": entry is not a JSON object");
      if (!v.contains("dtype")) core::fail(where, ": missing dtype");
      if (!v.contains("shape")) core::fail(where, ": missing shape");
      if (!v.contains("data_offsets")) core::fail(where, ": missing data_offsets");
      TensorInfo ti;
      if (!v["dtype"].is_string()) core::fail(where, ": dtype is not a string");
      ti.dtype = v["dtype"].get<std::string>();
      if (!dtype_known(ti.dtype)) core::fail(where, ": unsupported dtype '", ti.dtype, "'");
      const json& s = v["shape"];
      if (!s.is_array()) core::fail(where, ": shape is not an array");
      for (const json& d : s) {
        if (!d.is_number_unsigned())
          core::fail(where, ": shape ", s.dump(), " is not integers >= 0");
        uint64_t dv = d.get<uint64_t>();
        if (dv > static_cast<uint64_t>(INT64_MAX)) core::fail(where, ": shape dim too large");
        ti.shape.push_back(static_cast<int64_t>(dv));
      }
      const json& o = v["data_offsets"];
      if (!o.is_array() || o.size() != 2 || !o[0].is_number_unsigned() ||
          !o[1].is_number_unsigned())
        core::fail(where, ": data_offsets ", o.dump(), " is not two integers >= 0");
      ti.begin = o[0].get<uint64_t>();
      ti.end = o[1].get<uint64_t>();
      if (ti.begin > ti.end || ti.end > data_size)
        core::fail(where, ": data_offsets [", ti.begin, ", ", ti.end,
                   "] out of range of the data section (", data_size, " bytes)");
      uint64_t want = 0;
      if (!checked_bytes(ti.shape, dtype_size(ti.dtype), want) || want != ti.end - ti.begin)
        core::fail(where, ": data_offsets [", ti.begin, ", ", ti.end, "] hold ", ti.end - ti.begin,
                   " bytes but shape ", core::shape_str(ti.shape), " of ", ti.dtype, " needs ",
                   want);
      tensors_.emplace(name, std::move(ti));
    }

    // Overlapping byte ranges would alias two tensors; reject them (holes are tolerated).
    std::vector<std::pair<const TensorInfo*, const std::string*>> by_begin;
    for (const auto& [name, ti] : tensors_)
      if (ti.end > ti.begin) by_begin.push_back({&ti, &name});
    std::sort(by_begin.begin(), by_begin.end(),
              [](const auto& a, const auto& b) { return a.first->begin < b.first->begin; });
    for (size_t i = 1; i < by_begin.size(); ++i)
      if (by_begin[i].first->begin < by_begin[i - 1].first->end)
        core::fail(path, ": tensor '", *by_begin[i].second, "' overlaps tensor '",
                   *by_begin[i - 1].second, "'");
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) core::fail(path_, ": no tensor '", name, "'");
  return it->second;
}

std::span<const uint8_t> SafetensorsFile::bytes(const std::string& name) const {
  const TensorInfo& ti = info(name);
  return {map_ + data_start_ + ti.begin, static_cast<size_t>(ti.end - ti.begin)};
}

core::Tensor SafetensorsFile::to_float(const std::string& name) const {
  const TensorInfo& ti = info(name);
  core::Tensor t(ti.shape);
  const ElementRun whole{0, t.numel()};
  read_float(name, std::span<const ElementRun>(&whole, 1), t.ptr());
  return t;
}

void SafetensorsFile::read_float(const std::string& name, std::span<const ElementRun> runs,
                                 float* out) const {
  const TensorInfo& ti = info(name);
  if (!dtype_is_float(ti.dtype))
    core::fail(path_, ": tensor '", name, "' has dtype ", ti.dtype,
               ", which cannot be converted to float32 (only F32, BF16, F16)");
  const int64_t numel = core::numel(ti.shape);
  const uint8_t* base = map_ + data_start_ + ti.begin;
  const bool f32 = ti.dtype == "F32", bf = ti.dtype == "BF16";
  for (const ElementRun& r : runs) {
    if (r.offset < 0 || r.count < 0 || r.offset + r.count > numel)
      core::fail(path_, ": tensor '", name, "' (", numel, " elements): elements [", r.offset, ", ",
                 r.offset + r.count, ") requested");
    const int64_t n = r.count;
    float* dst = out;
    out += n;
    if (f32) {
      std::memcpy(dst, base + 4 * r.offset, static_cast<size_t>(n) * 4);
      continue;
    }
    const uint8_t* src = base + 2 * r.offset;
#pragma omp parallel for schedule(static) if (n > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);  // the mapping need not be 2-byte aligned
      dst[i] = bf ? bf16_to_float(h) : f16_to_float(h);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

void float_to_dtype(const float* src, int64_t n, const std::string& dtype, uint8_t* dst) {
  if (dtype == "F32") {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  DT_CHECK(dtype == "BF16" || dtype == "F16", "float data cannot be stored as ", dtype,
           " (only F32, BF16, F16)");
  const bool bf = dtype == "BF16";
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = bf ? float_to_bf16(src[i]) : float_to_f16(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

int64_t stored_bytes(const TensorRecord& t) {
  uint64_t n = 0;
  if (!checked_bytes(t.shape, dtype_size(t.dtype), n)) core::fail("tensor size overflows");
  return static_cast<int64_t>(n);
}

namespace {

void check_view(const std::string& path, const std::string& name, const TensorRecord& t) {
  const std::string where = path + ": tensor '" + name + "'";
  if (name.empty() || name == "__metadata__")
    core::fail(path, ": invalid tensor name '", name, "'");
  if (!dtype_known(t.dtype)) core::fail(where, ": unsupported dtype '", t.dtype, "'");
  for (int64_t d : t.shape)
    if (d < 0) core::fail(where, ": negative dimension in shape ", core::shape_str(t.shape));
  const int64_t nbytes = stored_bytes(t);
  if (t.fill) {
    if (t.f32 != nullptr || !t.bytes.empty()) core::fail(where, ": a fill function and data given");
  } else if (t.f32 != nullptr) {
    if (!t.bytes.empty()) core::fail(where, ": both float data and raw bytes given");
    if (!dtype_is_float(t.dtype))
      core::fail(where, ": float data cannot be stored as ", t.dtype, " (only F32, BF16, F16)");
  } else if (static_cast<int64_t>(t.bytes.size()) != nbytes) {
    core::fail(where, ": ", t.bytes.size(), " raw bytes given, shape ", core::shape_str(t.shape),
               " of ", t.dtype, " needs ", nbytes);
  }
}

void write_view_data(OutFile& f, const TensorRecord& t) {
  if (t.fill) {
    std::vector<uint8_t> buf(static_cast<size_t>(stored_bytes(t)));
    t.fill(buf.data());
    f.write(buf.data(), buf.size());
    return;
  }
  if (t.f32 == nullptr) {
    f.write(t.bytes.data(), t.bytes.size());
    return;
  }
  const int64_t n = core::numel(t.shape);
  if (t.dtype == "F32") {
    f.write(t.f32, static_cast<size_t>(n) * 4);
    return;
  }
  constexpr int64_t kChunk = 1 << 20;
  std::vector<uint16_t> buf(static_cast<size_t>(std::min(n, kChunk)));
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t m = std::min(kChunk, n - s);
    float_to_dtype(t.f32 + s, m, t.dtype, reinterpret_cast<uint8_t*>(buf.data()));
    f.write(buf.data(), static_cast<size_t>(m) * 2);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::map<std::string, TensorRecord>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {  // std::map: sorted names, deterministic layout
    check_view(path, name, t);
    const uint64_t nb = static_cast<uint64_t>(stored_bytes(t));
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + nb}}};
    off += nb;
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  const uint64_t hlen = header.size();

  write_file_atomic(path, [&](OutFile& f) {
    f.write(&hlen, 8);
    f.write(header.data(), header.size());
    for (const auto& [name, t] : tensors) write_view_data(f, t);
  });
}

// ---------------------------------------------------------------------------------------------
// Sharded

SafetensorsSet::SafetensorsSet(const std::string& dir) : dir_(dir) {
  const fs::path single = fs::path(dir) / kSingleWeightsName;
  const fs::path index = fs::path(dir) / kWeightsIndexName;
  if (fs::exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    for (const auto& kv : files_[0]->tensors()) where_[kv.first] = 0;
  } else if (fs::exists(index)) {
    const std::string ipath = index.string();
    json j;
    try {
      std::ifstream in(ipath);
      if (!in) core::fail(ipath, ": cannot open");
      j = json::parse(in);
    } catch (const json::exception& e) {
      core::fail(ipath, ": bad JSON: ", one_line(e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      core::fail(ipath, ": missing weight_map object");
    std::map<std::string, size_t> shard_ix;  // shard file name -> index into files_
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        core::fail(ipath, ": weight_map entry for '", it.key(), "' is not a string");
      const std::string shard = it.value().get<std::string>();
      auto s = shard_ix.find(shard);
      if (s == shard_ix.end()) {
        const fs::path sp = fs::path(dir) / shard;
        if (!fs::exists(sp))
          core::fail(ipath, ": shard ", shard, " (for tensor '", it.key(), "') is missing");
        files_.push_back(std::make_unique<SafetensorsFile>(sp.string()));
        s = shard_ix.emplace(shard, files_.size() - 1).first;
      }
      if (!files_[s->second]->contains(it.key()))
        core::fail(ipath, ": tensor '", it.key(), "' is not in its shard ", shard);
      where_[it.key()] = s->second;
    }
    // Every tensor of a shard must be the one the index maps there, so none is silently lost.
    for (size_t i = 0; i < files_.size(); ++i)
      for (const auto& kv : files_[i]->tensors()) {
        auto w = where_.find(kv.first);
        if (w == where_.end() || w->second != i)
          core::fail(ipath, ": tensor '", kv.first, "' in shard ", files_[i]->path(),
                     " is not mapped to that shard by the index");
      }
  } else {
    core::fail(dir, ": no ", kSingleWeightsName, " or ", kWeightsIndexName);
  }
  for (const auto& kv : where_) names_.push_back(kv.first);
}

const SafetensorsFile& SafetensorsSet::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) core::fail(dir_, ": no tensor '", name, "'");
  return *files_[it->second];
}

std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::map<std::string, TensorRecord>& tensors,
    const std::map<std::string, std::string>& metadata, int64_t max_shard_bytes) {
  DT_CHECK(max_shard_bytes > 0, dir, ": max shard size must be positive, got ", max_shard_bytes);
  // Greedy in name order: a new shard starts when the next tensor would overflow this one.
  std::vector<std::map<std::string, TensorRecord>> shards(1);
  int64_t cur = 0, total = 0;
  for (const auto& [name, t] : tensors) {
    check_view(dir, name, t);
    const int64_t nb = stored_bytes(t);
    if (!shards.back().empty() && cur + nb > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().emplace(name, t);
    cur += nb;
    total += nb;
  }
  std::vector<std::string> written;
  if (shards.size() == 1) {
    write_safetensors((fs::path(dir) / kSingleWeightsName).string(), shards[0], metadata);
    written.push_back(kSingleWeightsName);
    return written;
  }
  const size_t n = shards.size();
  json weight_map = json::object();
  for (size_t i = 0; i < n; ++i) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    write_safetensors((fs::path(dir) / fname).string(), shards[i], metadata);
    for (const auto& kv : shards[i]) weight_map[kv.first] = fname;
    written.push_back(fname);
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic((fs::path(dir) / kWeightsIndexName).string(), index.dump(2) + "\n");
  written.push_back(kWeightsIndexName);
  return written;
}

}  // namespace deltatron::io
