// Per-stage GPU timing with CUDA events (see profile.h).
#include "cuda/profile.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "cuda/device.h"

namespace deltatron::cuda {

namespace {
struct Rec {
  const char* name;
  cudaEvent_t start, stop;
};
bool g_on = false;
std::vector<Rec> g_recs;  // events are reused across collects
size_t g_used = 0;
}  // namespace

void profile_enable(bool on) { g_on = on; }

Stage::Stage(const char* name) : name_(name) {
  if (!g_on) return;
  if (g_used == g_recs.size()) {
    Rec r{name, nullptr, nullptr};
    DT_CUDA_CHECK(cudaEventCreate(&r.start));
    DT_CUDA_CHECK(cudaEventCreate(&r.stop));
    g_recs.push_back(r);
  }
  slot_ = int(g_used++);
  g_recs[slot_].name = name_;
  DT_CUDA_CHECK(cudaEventRecord(g_recs[slot_].start, 0));
}

Stage::~Stage() {
  if (slot_ >= 0) (void)cudaEventRecord(g_recs[slot_].stop, 0);
}

std::map<std::string, double> profile_collect() {
  std::map<std::string, double> out;
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  for (size_t i = 0; i < g_used; ++i) {
    float ms = 0;
    DT_CUDA_CHECK(cudaEventElapsedTime(&ms, g_recs[i].start, g_recs[i].stop));
    out[g_recs[i].name] += ms;
  }
  g_used = 0;
  return out;
}

}  // namespace deltatron::cuda
