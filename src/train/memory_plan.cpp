// The memory plan of a run (memory_plan.h).
#include "train/memory_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "model/footprint.h"
#include "ops/adamw.h"
#include "ops/device.h"
#include "train/rank_state.h"

namespace deltatron::train {

namespace {

constexpr double kGiB = double(1ull << 30);
// CUDA workspaces besides the pool's tensors: the LM head's chunk logits (512 MiB) and dlogits
// group (1 GiB, cuda/lm_head_ce.h), cuBLASLt and scratch buffers, and room for fragmentation.
constexpr double kCudaWorkspace = 2.5 * kGiB;
// The host's share not planned here (the process, the tokenizer, the data index, the page cache
// the loader needs): the plan must leave this much of the available memory.
constexpr double kHostReserve = 2.0 * kGiB;

std::string gib(double b) {
  std::ostringstream s;
  s.precision(3);
  s << b / kGiB << " GiB";
  return s.str();
}

// The options a user can change, as config text.
std::string options_text(const PlanInput& in) {
  std::string s = "training.master = " + model::master_name(in.state) +
                  ", training.moments = " + model::moments_name(in.state) +
                  ", training.offload = " + model::offload_name(in.state);
  if (in.device == core::Device::cuda)
    s += std::string(", training.recompute = ") + (in.recompute ? "true" : "false");
  return s + ", training.micro_batch_tokens = " + std::to_string(in.micro_batch_tokens);
}

// The device holds one rank's plan; the host, every local rank's.
bool fits(const MemoryPlan& p, const Available& a) {
  const double host = p.host_total() * double(std::max<int64_t>(1, p.layout.local_ranks));
  if (p.device == core::Device::cpu) return host + kHostReserve <= a.host;
  return p.device_total() <= a.device && host + kHostReserve <= a.host;
}

// The run's layout in a few words ("dp 8, zero 3, ep 8"); empty for one rank.
std::string layout_text(const PlanLayout& l) {
  if (!l.on()) return "";
  std::string s = "dp " + std::to_string(l.dp);
  if (l.zero > 0) s += ", zero " + std::to_string(l.zero);
  if (l.ep > 1) s += ", ep " + std::to_string(l.ep);
  if (l.tp > 1) s += ", tp " + std::to_string(l.tp) + (l.sp ? " + sp" : "");
  return s;
}

}  // namespace

double MemoryPlan::host_total() const {
  const double dev = device == core::Device::cpu ? device_total() : 0;
  return host_weights + host_state + host_save + dev;
}

MemoryPlan plan_memory(const model::Config& c, const PlanInput& in) {
  MemoryPlan p;
  p.device = in.device;
  p.layout = in.layout;
  p.params = model::param_count(c);
  p.local_params = p.params;
  p.per_param = model::state_bytes(in.compute, in.state);
  const double n = double(p.params);
  // A frozen vision tower: its compute weights alone (model::Model holds it apart).
  p.frozen = in.lora_params >= 0 ? 0 : model::frozen_param_count(c);
  model::StateOptions frozen;
  frozen.frozen = true;
  p.frozen_per_param = p.frozen > 0 ? model::state_bytes(in.compute, frozen).held : 0;
  double trained = double(p.params - p.frozen);
  p.state = (in.training ? p.per_param.train : p.per_param.held) * trained +
            p.frozen_per_param * double(p.frozen);
  if (in.layout.on() && in.lora_params < 0) {  // one rank's share (train/rank_state.h)
    const RankState rs = rank_state(c, in);  // (a frozen tower counted as trained: an upper bound)
    p.frozen = 0;
    p.local_params = rs.params;
    trained = double(rs.params);
    p.state = rs.state + rs.gathered;
    p.gathered = rs.gathered;
    p.staging = rs.staging;
  }
  const double moments = in.state.moments == core::DType::bf16 ? 4 : 8;
  p.host_state =
      (p.per_param.host - (!in.training && in.state.offload_moments ? moments : 0)) * trained;
  if (in.layout.on() && in.lora_params < 0) p.host_state = rank_state(c, in).host;  // the share
  if (in.training && (in.state.offload_moments || in.state.offload_master)) {
    p.staging += double(ops::adamw_offload_staging_bytes(
        model::adamw_offload(in.state), in.state.moments, in.state.master_remainder ? 2 : 4));
  }
  const model::ActivationOptions ao{in.recompute && in.device == core::Device::cuda,
                                    in.recompute_selective};
  const model::ActivationAccount acc =
      model::activation_account(c, in.micro_batch_tokens, in.compute, ao);
  p.activations = acc.peak;
  p.activation_detail = model::describe_activations(c, in.micro_batch_tokens, in.compute, ao, acc);
  // The vision tower's, whole on every rank (under tp each rank of the group runs it whole).
  p.activations += model::vision_activation_bytes(
      c, int64_t(std::ceil(in.image_patches_per_token * double(in.micro_batch_tokens))));
  const double D = double(c.hidden_size), N = double(in.micro_batch_tokens);
  p.workspace = 6 * N * D * 4 + (in.device == core::Device::cuda ? kCudaWorkspace : 0);
  int64_t largest = 0;  // the largest tensor's elements
  for (const model::ParamSpec& s : model::param_specs(c))
    largest = std::max(largest, core::numel(s.shape));
  // Streamed: the f32 tensor being made and its bf16 copy. Under ep or tp a rank reads only its
  // slices (train/local_slices.h): its share in f32 plus the loader's staging, at most two of the
  // largest tensor (a per-expert module's files and the expert tensor assembled from them).
  // ZeRO 3 (not LoRA): its pieces of those (zero3_slices), the shard's elements.
  const bool pieces = in.layout.on() && in.layout.zero == 3 && in.lora_params < 0;
  const bool sliced = (in.layout.ep > 1 || in.layout.tp > 1 || pieces) && in.lora_params < 0;
  const double local = pieces ? double(rank_state(c, in).shard) : double(p.local_params);
  p.host_weights = in.streamed_weights ? 6 * double(largest)
                   : sliced            ? 4 * local + 8 * double(largest)
                                       : 4 * n;
  if (in.lora_params >= 0) {  // the frozen base + the adapters' state
    model::StateOptions adapters;
    adapters.moments = in.state.moments;
    const model::StateBytes fb = model::state_bytes(in.compute, frozen);
    const model::StateBytes ab = model::state_bytes(in.compute, adapters);
    const double na = double(in.lora_params);
    p.per_param = fb;
    p.state = fb.held * n + (in.training ? ab.train : ab.held) * na;
    p.host_state = 0;
    p.staging = 0;
    if (in.layout.on()) {  // one rank's share (train/rank_state.h): the base's, the adapters'
      const RankState rs = rank_state(c, in);
      p.local_params = rs.params;
      p.state = rs.state + rs.gathered;
      p.gathered = rs.gathered;
      p.staging = rs.staging;
    }
    p.host_save = in.training && (in.resuming || in.saves_checkpoints) ? 8 * na : 0;
    // ep: a save gathers the adapters' whole weights and moments on every rank.
    if (in.training && in.saves_checkpoints && in.layout.ep > 1)
      p.host_save = std::max(p.host_save, 12 * na);
    return p;
  }
  // A resume reads this rank's moments (its slices under ep or tp) into host memory (f32) before
  // the engine takes them; a save streams the state to rank 0 one tensor at a time
  // (train/state_stream.h): the writer's buffer and the tensor being read (8 B x the largest
  // tensor), under a layout also the slices gathered to rank 0 (12 B x the largest; the other
  // ranks hold one slice). The resume's copies are freed before the first save.
  const bool layout_save = in.layout.dp > 1 || in.layout.ep > 1 || in.layout.tp > 1;
  const double resume = in.training && in.resuming ? 8 * (sliced ? local : n) : 0;
  const double save =
      in.training && in.saves_checkpoints ? (layout_save ? 12 : 8) * double(largest) : 0;
  p.host_save = std::max(resume, save);
  return p;
}

std::string describe(const MemoryPlan& p) {
  std::ostringstream s;
  s.precision(3);
  s << double(p.params) / 1e9 << "B parameters";
  const std::string layout = layout_text(p.layout);
  if (!layout.empty()) s << " (" << layout << "; per rank " << double(p.local_params) / 1e9 << "B)";
  s << "; on " << core::device_name(p.device) << ": state " << p.per_param.train << " B/param";
  if (!layout.empty()) s << ", this rank's share";
  if (p.frozen > 0)
    s << " x " << double(p.params - p.frozen) / 1e9 << "B trained + " << p.frozen_per_param
      << " B/param x " << double(p.frozen) / 1e9 << "B frozen (weights alone)";
  s << " = " << gib(p.state);
  if (p.gathered > 0) s << " (gathered layers " << gib(p.gathered) << ")";
  s << ", activations " << gib(p.activations) << ", workspace " << gib(p.workspace + p.staging);
  if (p.device != core::Device::cpu) s << ", total " << gib(p.device_total());
  s << "; host: weights " << gib(p.host_weights);
  if (p.host_state > 0) s << ", offloaded state " << gib(p.host_state);
  if (p.host_save > 0) s << ", save or resume buffers " << gib(p.host_save);
  s << ", total " << gib(p.host_total());
  if (p.layout.local_ranks > 1) s << " per rank x " << p.layout.local_ranks << " on this host";
  return s.str();
}

Available available_memory(core::Device dev) {
  Available a;
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") a.host = kb * 1024.0;
  if (a.host == 0) a.host = double(::sysconf(_SC_AVPHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  a.device = dev == core::Device::cpu ? a.host : double(ops::memory_info(dev).free);
  return a;
}

void check_memory_plan(const model::Config& c, const PlanInput& in, const Available& avail,
                       const std::string& what) {
  const MemoryPlan p = plan_memory(c, in);
  if (fits(p, avail)) return;
  // What would fit: the lean options first (no cost, or a little rounding), then recomputation
  // (a third more compute), then offloading (PCIe time every step), each with recomputation.
  std::vector<std::string> ways;
  const bool bf16 = in.compute == core::DType::bf16;
  const bool cuda = in.device == core::Device::cuda;
  PlanInput t = in;
  std::string text;
  const auto add = [&](const std::string& s) { text += (text.empty() ? "" : ", ") + s; };
  if (bf16 && !t.state.master_remainder) {
    t.state.master_remainder = true;
    add("training.master = remainder");
  }
  if (t.state.moments != core::DType::bf16) {
    t.state.moments = core::DType::bf16;
    add("training.moments = bf16");
  }
  std::vector<std::pair<PlanInput, std::string>> tries;
  const auto with_recompute = [&] {
    if (!text.empty()) tries.push_back({t, text});
    if (cuda && !t.recompute) {
      PlanInput r = t;
      r.recompute = true;
      tries.push_back({r, text + (text.empty() ? "" : ", ") + "training.recompute = true"});
    }
  };
  with_recompute();
  if (cuda && !t.state.offload_moments) {
    t.state.offload_moments = true;
    const std::string before = text;
    add("training.offload = moments");
    with_recompute();
    text = before;
  }
  if (cuda && bf16 && !t.state.offload_master) {
    t.state.offload_moments = t.state.offload_master = true;
    add("training.offload = master+moments");
    with_recompute();
  }
  for (const auto& [opt, way] : tries)
    if (fits(plan_memory(c, opt), avail)) {
      ways.push_back(way);
      break;
    }
  if (c.vision_mode == model::VisionMode::full && in.image_patches_per_token > 0) {
    model::Config merger = c;  // the tower's blocks keep nothing
    merger.vision_mode = model::VisionMode::merger;
    if (fits(plan_memory(merger, in), avail)) ways.push_back("model.vision = \"merger\"");
  }
  for (int64_t m = in.micro_batch_tokens / 2; m >= 256; m /= 2) {
    PlanInput s = in;
    s.micro_batch_tokens = m;
    if (fits(plan_memory(c, s), avail)) {
      ways.push_back("training.micro_batch_tokens = " + std::to_string(m));
      break;
    }
  }
  std::ostringstream msg;
  msg << what << ": this run does not fit in memory: " << describe(p) << "; free: ";
  if (in.device != core::Device::cpu) msg << gib(avail.device) << " on the device, ";
  msg << gib(avail.host) << " of host memory (" << gib(kHostReserve)
      << " kept for the rest of the process) with " << options_text(in) << "; ";
  if (ways.empty())
    msg << "no training option makes it fit: use a smaller model or fewer layers, or a machine "
           "with more memory";
  else {
    msg << "it would fit with ";
    for (size_t i = 0; i < ways.size(); ++i) msg << (i ? ", or with " : "") << ways[i];
  }
  core::fail(msg.str());
}

}  // namespace deltatron::train
