// TensorBoard event files: CRC-32C known answers, exact protobuf bytes, a write/read round trip
// through an independent reader (both CRCs of every record checked; any flipped byte detected),
// the file name, write errors, and the trainer-side mapping of metrics records to tags.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>

#include "io/tensorboard_writer.h"
#include "test_util.h"
#include "tfevents_reader.h"
#include "train/tensorboard_log.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out += {d[c >> 4], d[c & 15], ' '};
  return out;
}

TEST(Crc32c, KnownAnswers) {
  // The check value of CRC-32C and the iSCSI test vectors of RFC 3720, B.4.
  const std::string digits = "123456789";
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = char(i);
  const std::vector<std::pair<std::string, uint32_t>> cases = {{"", 0x00000000u},
                                                               {digits, 0xE3069283u},
                                                               {zeros, 0x8A9136AAu},
                                                               {ones, 0x62A8AB43u},
                                                               {inc, 0x46DD794Eu}};
  for (const auto& [s, want] : cases) {
    EXPECT_EQ(io::crc32c(s.data(), s.size()), want) << "writer, " << s.size() << " bytes";
    EXPECT_EQ(dt_test::crc32c_bitwise(reinterpret_cast<const uint8_t*>(s.data()), s.size()), want)
        << "test reader, " << s.size() << " bytes";
  }
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(io::crc32c_masked(digits.data(), digits.size()), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoardEvent, ExactProtobufBytes) {
  // Worked by hand from the protobuf wire format: Event{wall_time=0.0 (09 + 8 bytes),
  // step=1 (10 01), summary (2a len){value (0a len){tag "a" (0a 01 61), simple_value 1.0f
  // (15 00 00 80 3f)}}}.
  const std::string want("\x09\0\0\0\0\0\0\0\0\x10\x01\x2a\x0a\x0a\x08\x0a\x01\x61\x15\0\0\x80\x3f",
                         23);
  const std::string got = io::event_scalars(0.0, 1, {{"a", 1.0f}});
  EXPECT_EQ(got, want) << "got  " << hex(got) << "\nwant " << hex(want);
  // file_version: wall_time 1.5 (3ff8000000000000 little-endian), step 0, field 3 "brain.Event:2".
  const std::string fv = io::event_file_version(1.5);
  EXPECT_EQ(fv, std::string("\x09\0\0\0\0\0\0\xf8\x3f\x10\x00\x1a\x0d", 13) + "brain.Event:2")
      << hex(fv);
  // SessionLog START at step 300 (varint ac 02): field 7 (3a) of length 2 holding status=1 (08 01).
  const std::string ss = io::event_session_start(0.0, 300);
  EXPECT_EQ(ss, std::string("\x09\0\0\0\0\0\0\0\0\x10\xac\x02\x3a\x02\x08\x01", 16)) << hex(ss);
  // TFRecord framing: 8-byte length, its masked CRC, the data, the data's masked CRC.
  const std::string rec = io::tfrecord_frame(got);
  ASSERT_EQ(rec.size(), 8 + 4 + got.size() + 4);
  EXPECT_EQ(rec.substr(0, 8), std::string("\x17\0\0\0\0\0\0\0", 8));
  const uint32_t len_crc = io::crc32c_masked(rec.data(), 8);
  const uint32_t data_crc = io::crc32c_masked(got.data(), got.size());
  EXPECT_EQ(rec.substr(8, 4), std::string(reinterpret_cast<const char*>(&len_crc), 4));
  EXPECT_EQ(rec.substr(12 + got.size()), std::string(reinterpret_cast<const char*>(&data_crc), 4));
}

TEST(TensorBoardEvent, WrittenScalarsReadBackExactly) {
  const dt_test::TempDir tmp("tb");
  const std::string path = io::new_event_file_path(tmp.path.string());
  const std::string long_tag = "train/" + std::string(200, 'x');  // a two-byte length varint
  const std::vector<std::pair<int64_t, std::vector<io::ScalarValue>>> steps = {
      {7, {{"train/loss", 2.718281828f}, {"train/lr", 3e-4f}}},
      {8, {{"train/loss", -0.0f}, {"eval/accuracy", 1e-38f}, {long_tag, 65504.5f}}},
      {int64_t(1) << 40, {{"train/loss", std::numeric_limits<float>::infinity()}}},
      {9, {}}};
  const double t0 = now_s();
  {
    io::EventFileWriter w(path);
    w.write_session_start(7);
    for (const auto& [step, values] : steps) w.write_scalars(step, values);
  }
  const double t1 = now_s();

  const std::vector<dt_test::TfEvent> ev = dt_test::read_tfevents(path);
  ASSERT_EQ(ev.size(), 2 + steps.size());
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_EQ(ev[0].step, 0);
  EXPECT_TRUE(ev[1].session_start);
  EXPECT_EQ(ev[1].step, 7);
  for (const auto& e : ev) {
    EXPECT_GE(e.wall_time, std::floor(t0));
    EXPECT_LE(e.wall_time, t1 + 1);
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const dt_test::TfEvent& e = ev[2 + i];
    EXPECT_EQ(e.step, steps[i].first);
    EXPECT_FALSE(e.session_start);
    ASSERT_EQ(e.scalars.size(), steps[i].second.size()) << "step " << e.step;
    for (size_t k = 0; k < e.scalars.size(); ++k) {
      EXPECT_EQ(e.scalars[k].first, steps[i].second[k].tag);
      EXPECT_EQ(float_bits(e.scalars[k].second), float_bits(steps[i].second[k].value))
          << e.scalars[k].first << ": got " << e.scalars[k].second << ", wrote "
          << steps[i].second[k].value;
    }
  }

  // Every single flipped byte, and a truncated file, make the reader fail: the CRCs are checked.
  const std::string bytes = dt_test::read_file(path);
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = char(bad[i] ^ 0x10);
    EXPECT_THROW(dt_test::read_tfevents_bytes(bad), std::runtime_error) << "byte " << i;
  }
  EXPECT_THROW(dt_test::read_tfevents_bytes(bytes.substr(0, bytes.size() - 1)), std::runtime_error);
}

TEST(TensorBoardEvent, FileNamesAreNewAndAsTensorBoardExpects) {
  const dt_test::TempDir tmp("tb");
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  const std::regex want("events\\.out\\.tfevents\\.[0-9]{10}\\." + std::string(host) + "\\." +
                        std::to_string(::getpid()) + "\\.[0-9]+");
  const std::string a = io::new_event_file_path(tmp.path.string());
  { io::EventFileWriter w(a); }
  const std::string b = io::new_event_file_path(tmp.path.string());
  EXPECT_TRUE(std::regex_match(fs::path(a).filename().string(), want)) << a;
  EXPECT_EQ(fs::path(a).parent_path(), tmp.path);
  EXPECT_NE(a, b);
  EXPECT_FALSE(fs::exists(b));
}

TEST(TensorBoardEvent, WriteFailureNamesTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  dt_test::expect_error([] { io::EventFileWriter w("/dev/full"); }, {"/dev/full"});
  dt_test::expect_error([] { io::EventFileWriter w("/nonexistent-dir/events.out.tfevents.1"); },
                        {"/nonexistent-dir/events.out.tfevents.1"});
}

TEST(TensorBoardLog, NumericFieldsOfARecordBecomeTaggedScalars) {
  const dt_test::TempDir tmp("tb");
  {
    train::TensorBoardLog log(tmp.path.string(), true, 3);
    EXPECT_EQ(fs::path(log.path()).parent_path(), tmp.path / train::kTensorBoardDir);
    log.log({{"step", 3},
             {"loss", 2.5},
             {"lr", 1e-3},
             {"skipped", false},
             {"tokens", 100},
             {"router_loss", 0.125}});
    log.log({{"step", 3}, {"eval_loss", 1.0 / 3.0}, {"eval_accuracy", 0.25}});
  }
  const auto files = dt_test::tfevents_files(tmp.path / train::kTensorBoardDir);
  ASSERT_EQ(files.size(), 1u);
  const auto ev = dt_test::read_tfevents(files[0]);
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_TRUE(ev[1].session_start);
  EXPECT_EQ(ev[1].step, 3);
  using Scalars = std::vector<std::pair<std::string, float>>;
  EXPECT_EQ(ev[2].step, 3);
  EXPECT_EQ(ev[2].scalars, (Scalars{{"train/loss", 2.5f},
                                    {"train/lr", float(1e-3)},
                                    {"train/router_loss", 0.125f},
                                    {"train/tokens", 100.0f}}));
  EXPECT_EQ(ev[3].step, 3);
  EXPECT_EQ(ev[3].scalars, (Scalars{{"eval/accuracy", 0.25f}, {"eval/loss", float(1.0 / 3.0)}}));

  // Disabled: nothing is created.
  const dt_test::TempDir off("tb-off");
  train::TensorBoardLog none(off.path.string(), false, 1);
  none.log({{"step", 1}, {"loss", 1.0}});
  EXPECT_EQ(none.path(), "");
  EXPECT_FALSE(fs::exists(off.path / train::kTensorBoardDir));
}

}  // namespace
