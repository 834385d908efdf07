// A small TensorBoard event-file reader for tests, written independently of the writer
// (bit-by-bit CRC-32C, its own protobuf decoder): checks both CRCs of every record and decodes
// the Event fields deltatron writes; anything malformed throws std::runtime_error.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dt_test {

struct TfEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;                            // set on the first record
  bool session_start = false;                          // a SessionLog with status START
  std::vector<std::pair<std::string, float>> scalars;  // summary values: tag, simple_value
};

// CRC-32C one bit at a time (polynomial 0x82F63B78, reflected).
inline uint32_t crc32c_bitwise(const uint8_t* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

inline uint32_t masked_crc(const uint8_t* p, size_t n) {
  const uint32_t c = crc32c_bitwise(p, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

// A cursor over protobuf bytes.
class ProtoReader {
 public:
  ProtoReader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool done() const { return p_ == end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      need(1);
      const uint8_t b = *p_++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw std::runtime_error("protobuf: varint longer than 10 bytes");
  }
  uint64_t fixed(int bytes) {
    need(size_t(bytes));
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(p_[i]) << (8 * i);
    p_ += bytes;
    return v;
  }
  std::pair<const uint8_t*, size_t> bytes() {
    const uint64_t n = varint();
    need(n);
    const uint8_t* s = p_;
    p_ += n;
    return {s, size_t(n)};
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0:
        varint();
        break;
      case 1:
        fixed(8);
        break;
      case 2:
        bytes();
        break;
      case 5:
        fixed(4);
        break;
      default:
        throw std::runtime_error("protobuf: wire type " + std::to_string(wire_type));
    }
  }

 private:
  void need(uint64_t n) const {
    if (n > uint64_t(end_ - p_)) throw std::runtime_error("protobuf: truncated field");
  }
  const uint8_t* p_;
  const uint8_t* end_;
};

inline void expect_wire(uint32_t got, uint32_t want, const char* field) {
  if (got != want)
    throw std::runtime_error(std::string("protobuf: ") + field + " has wire type " +
                             std::to_string(got));
}

inline TfEvent decode_event(const uint8_t* p, size_t n) {
  TfEvent e;
  ProtoReader r(p, n);
  while (!r.done()) {
    const uint64_t key = r.varint();
    const uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
    if (field == 1) {
      expect_wire(wire, 1, "Event.wall_time");
      const uint64_t bits = r.fixed(8);
      std::memcpy(&e.wall_time, &bits, 8);
    } else if (field == 2) {
      expect_wire(wire, 0, "Event.step");
      e.step = int64_t(r.varint());
    } else if (field == 3) {
      expect_wire(wire, 2, "Event.file_version");
      const auto [s, len] = r.bytes();
      e.file_version.assign(reinterpret_cast<const char*>(s), len);
    } else if (field == 5) {
      expect_wire(wire, 2, "Event.summary");
      const auto [s, len] = r.bytes();
      ProtoReader summary(s, len);
      while (!summary.done()) {
        const uint64_t k = summary.varint();
        if (k >> 3 != 1) {
          summary.skip(uint32_t(k & 7));
          continue;
        }
        expect_wire(uint32_t(k & 7), 2, "Summary.value");
        const auto [vs, vlen] = summary.bytes();
        ProtoReader value(vs, vlen);
        std::pair<std::string, float> tv;
        bool has_value = false;
        while (!value.done()) {
          const uint64_t vk = value.varint();
          if (vk >> 3 == 1) {
            expect_wire(uint32_t(vk & 7), 2, "Value.tag");
            const auto [ts, tlen] = value.bytes();
            tv.first.assign(reinterpret_cast<const char*>(ts), tlen);
          } else if (vk >> 3 == 2) {
            expect_wire(uint32_t(vk & 7), 5, "Value.simple_value");
            const uint32_t bits = uint32_t(value.fixed(4));
            std::memcpy(&tv.second, &bits, 4);
            has_value = true;
          } else {
            value.skip(uint32_t(vk & 7));
          }
        }
        if (!has_value) throw std::runtime_error("summary value '" + tv.first + "' is not simple");
        e.scalars.push_back(tv);
      }
    } else if (field == 7) {
      expect_wire(wire, 2, "Event.session_log");
      const auto [s, len] = r.bytes();
      ProtoReader log(s, len);
      while (!log.done()) {
        const uint64_t k = log.varint();
        if (k >> 3 == 1 && (k & 7) == 0)
          e.session_start = log.varint() == 1;
        else
          log.skip(uint32_t(k & 7));
      }
    } else {
      r.skip(wire);
    }
  }
  return e;
}

// Every record of an event file's bytes; throws on a bad length CRC, data CRC or truncation.
inline std::vector<TfEvent> read_tfevents_bytes(const std::string& bytes) {
  std::vector<TfEvent> out;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t pos = 0;
  const size_t n = bytes.size();
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(p[at + i]) << (8 * i);
    return v;
  };
  while (pos < n) {
    const std::string where = "record at byte " + std::to_string(pos);
    if (n - pos < 12) throw std::runtime_error(where + ": truncated header");
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= uint64_t(p[pos + i]) << (8 * i);
    if (u32(pos + 8) != masked_crc(p + pos, 8))
      throw std::runtime_error(where + ": length CRC mismatch");
    if (len > n - pos - 12 || n - pos - 12 - len < 4)
      throw std::runtime_error(where + ": truncated data");
    const uint8_t* data = p + pos + 12;
    if (u32(pos + 12 + len) != masked_crc(data, len))
      throw std::runtime_error(where + ": data CRC mismatch");
    out.push_back(decode_event(data, size_t(len)));
    pos += 12 + len + 4;
  }
  return out;
}

inline std::vector<TfEvent> read_tfevents(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return read_tfevents_bytes(std::string(std::istreambuf_iterator<char>(in), {}));
}

// The event files in dir, in name order (the order TensorBoard reads them).
inline std::vector<std::filesystem::path> tfevents_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find("tfevents") != std::string::npos) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace dt_test
