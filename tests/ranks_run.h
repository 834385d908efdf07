// Helpers of the multi-rank tests (test_data_parallel, test_zero): a `deltatron` command on N CPU
// ranks started by `deltatron launch`, and the worst tensor difference of two safetensors files.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"

namespace dt_test {

// Runs `deltatron ARGS` on `ranks` ranks (1: directly); stderr into err. Returns the exit code.
inline int run_ranks(int ranks, const std::string& args, const std::filesystem::path& err) {
  const std::string bin = DT_BINARY;
  std::string cmd =
      ranks == 1 ? bin + " " + args
                 : bin + " launch --nproc " + std::to_string(ranks) + " -- " + bin + " " + args;
  cmd += " 2> " + err.string();
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

// `deltatron score ARGS` (args begins with "score") on `ranks` ranks writing OUT.jsonl (the
// per-sample losses), OUT.safetensors (the gradients) and stderr into OUT.err. The exit code.
inline int score_ranks(int ranks, const std::string& args, const std::filesystem::path& out) {
  const std::string o = out.string();
  return run_ranks(ranks, args + " --output " + o + ".jsonl --grad-out " + o + ".safetensors",
                   o + ".err");
}

// The JSON objects of a JSONL file (score outputs), blank lines skipped.
inline std::vector<nlohmann::json> jsonl(const std::filesystem::path& p) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_file(p));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Worst relative RMS difference over the tensors of two safetensors files (the same names).
inline double worst_rel_rms(const std::filesystem::path& got, const std::filesystem::path& want,
                            std::string& worst_name) {
  namespace io = deltatron::io;
  io::SafetensorsFile g(got.string()), w(want.string());
  EXPECT_EQ(g.names(), w.names()) << got;
  double worst = 0;
  for (const auto& name : w.names()) {
    if (!g.contains(name)) continue;
    const deltatron::core::Tensor a = g.to_float(name), b = w.to_float(name);
    const double r = compare(a.ptr(), b.ptr(), size_t(b.numel())).rel_rms;
    if (r > worst) worst = r, worst_name = name;
  }
  return worst;
}

}  // namespace dt_test
