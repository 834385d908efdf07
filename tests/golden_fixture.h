// The Hugging Face golden fixtures (tests/data/golden/<case>/): checkpoint, samples, expected
// per-sample losses, and the pack both golden tests score (CPU: test_golden.cpp; GPU:
// tests/gpu/test_gpu_model.cpp).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/pack.h"
#include "data/sample.h"
#include "io/checkpoint.h"

namespace dt_test {

struct GoldenFixture {
  deltatron::io::Checkpoint ck;
  std::vector<deltatron::data::Sample> samples;
  // Optional golden.json {"mtp_scale": s}: the fixture's gradients are then
  // d(sum loss + s * sum mtp_loss).
  double mtp_scale = 0.0;
  std::vector<double> want_loss, want_mtp;  // by sample index (want_mtp empty without MTP)
  std::vector<int64_t> want_n, want_mtp_n;
  // Every sample in one pack, in reverse order, with alignment padding (8) between samples.
  deltatron::data::Pack pack;
};

// Loads the fixture in `dir`; fatal gtest failures on a malformed fixture (callers check
// HasFatalFailure()).
inline void load_golden(const std::filesystem::path& dir, GoldenFixture& g) {
  namespace fs = std::filesystem;
  using namespace deltatron;
  g.ck = io::load_checkpoint(dir.string());
  g.samples = data::read_token_jsonl((dir / "samples.jsonl").string(), g.ck.config.vocab_size);
  if (fs::exists(dir / "golden.json")) {
    std::ifstream meta(dir / "golden.json");
    g.mtp_scale = nlohmann::json::parse(meta).value("mtp_scale", 0.0);
  }
  std::ifstream in(dir / "expected.jsonl");
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    ASSERT_EQ(j["index"].get<size_t>(), g.want_loss.size());
    g.want_loss.push_back(j["loss_sum"].get<double>());
    g.want_n.push_back(j["n_tokens"].get<int64_t>());
    if (j.contains("mtp_loss_sum")) {
      g.want_mtp.push_back(j["mtp_loss_sum"].get<double>());
      g.want_mtp_n.push_back(j["mtp_n_tokens"].get<int64_t>());
    }
  }
  ASSERT_EQ(!g.want_mtp.empty(), g.ck.config.mtp_enabled) << "fixture and config disagree on MTP";
  ASSERT_EQ(g.want_loss.size(), g.samples.size());

  std::vector<const data::Sample*> members;
  std::vector<int64_t> index;
  for (int64_t i = static_cast<int64_t>(g.samples.size()) - 1; i >= 0; --i) {
    members.push_back(&g.samples[i]);
    index.push_back(i);
  }
  g.pack = data::make_pack(members, index, 8);
}

}  // namespace dt_test
