// TensorBoard event files: CRC-32C, TFRecord framing, protobuf encoding (see tensorboard_writer.h).
#include "io/tensorboard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace deltatron::io {

namespace {

// ---- CRC-32C -------------------------------------------------------------------------------

// Byte-at-a-time table: entry b is the CRC register after shifting in byte b from zero.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t r = b;
    for (int k = 0; k < 8; ++k) r = (r >> 1) ^ ((r & 1u) ? 0x82F63B78u : 0u);
    t[b] = r;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// ---- protobuf wire format ------------------------------------------------------------------
// A field is a key varint (field_number << 3 | wire_type) followed by its payload: a varint
// (type 0), 8 little-endian bytes (type 1), a varint length and the bytes (type 2), or 4
// little-endian bytes (type 5).

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(uint8_t(v)));
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(char(uint8_t(v >> (8 * i))));
}

void put_key(std::string& out, uint32_t field, WireType type) {
  put_varint(out, (uint64_t(field) << 3) | type);
}

void put_bytes(std::string& out, uint32_t field, std::string_view s) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, s.size());
  out.append(s);
}

void put_double(std::string& out, uint32_t field, double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

// int64 is encoded as the varint of its two's complement (10 bytes when negative).
void put_int64(std::string& out, uint32_t field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, uint64_t(v));
}

// Event fields.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5,
                   kEventSessionLog = 7;
constexpr uint32_t kSummaryValue = 1, kValueTag = 1, kValueSimpleValue = 2;
constexpr uint32_t kSessionLogStatus = 1, kSessionStart = 1;

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_double(e, kEventWallTime, wall_time);
  put_int64(e, kEventStep, step);
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::atomic<int> g_event_files_named{0};

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t r = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) r = (r >> 8) ^ kCrc32cTable[(r ^ p[i]) & 0xFFu];
  return r ^ 0xFFFFFFFFu;
}

uint32_t crc32c_masked(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(out, data.size(), 8);
  put_le(out, crc32c_masked(out.data(), 8), 4);
  out.append(data);
  put_le(out, crc32c_masked(data.data(), data.size()), 4);
  return out;
}

std::string event_file_version(double wall_time) {
  std::string e = event_header(wall_time, 0);
  put_bytes(e, kEventFileVersion, "brain.Event:2");
  return e;
}

std::string event_session_start(double wall_time, int64_t step) {
  std::string log;
  put_key(log, kSessionLogStatus, kVarint);
  put_varint(log, kSessionStart);
  std::string e = event_header(wall_time, step);
  put_bytes(e, kEventSessionLog, log);
  return e;
}

std::string event_scalars(double wall_time, int64_t step, const std::vector<ScalarValue>& values) {
  std::string summary;
  for (const ScalarValue& v : values) {
    std::string value;
    put_bytes(value, kValueTag, v.tag);
    put_float(value, kValueSimpleValue, v.value);
    put_bytes(summary, kSummaryValue, value);
  }
  std::string e = event_header(wall_time, step);
  put_bytes(e, kEventSummary, summary);
  return e;
}

std::string new_event_file_path(const std::string& dir) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const long long secs = static_cast<long long>(now_seconds());
  for (;;) {
    const std::string name = "events.out.tfevents." + std::to_string(secs) + "." + host + "." +
                             std::to_string(::getpid()) + "." +
                             std::to_string(g_event_files_named++);
    const std::filesystem::path p = std::filesystem::path(dir) / name;
    if (!std::filesystem::exists(p)) return p.string();
  }
}

EventFileWriter::EventFileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) core::fail(path, ": cannot open TensorBoard event file: ", std::strerror(errno));
  try {
    write_record(event_file_version(now_seconds()));
  } catch (...) {
    ::close(fd_);  // the destructor does not run for a constructor that throws
    throw;
  }
}

EventFileWriter::~EventFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventFileWriter::write_session_start(int64_t step) {
  write_record(event_session_start(now_seconds(), step));
}

void EventFileWriter::write_scalars(int64_t step, const std::vector<ScalarValue>& values) {
  write_record(event_scalars(now_seconds(), step, values));
}

void EventFileWriter::write_record(const std::string& event) {
  const std::string rec = tfrecord_frame(event);
  const char* p = rec.data();
  size_t n = rec.size();
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      core::fail(path_, ": cannot write TensorBoard event: ", std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace deltatron::io
