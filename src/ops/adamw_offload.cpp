// AdamW over offloaded state (ops/adamw.h: adamw_step_offloaded): chunks of host state staged
// through two device slots, stepped by adamw_step_multi.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "ops/adamw.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/offload.h"
#endif

namespace deltatron::ops {

using core::DType;
using core::View;

namespace {

// Element offsets of staged pieces are multiples of this (vector loads, as the parameter store).
constexpr int64_t kAlign = 64;
int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The device switch of the copy pipeline: CUDA streams and events, or plain copies on the CPU.
class Pipeline {
 public:
  explicit Pipeline(core::Device dev) {
#ifdef DT_HAVE_CUDA
    if (dev == core::Device::cuda) cuda_ = std::make_unique<cuda::OffloadPipeline>();
#endif
    (void)dev;
  }
  void begin_fill(int s) {
#ifdef DT_HAVE_CUDA
    if (cuda_) cuda_->begin_fill(s);
#endif
    (void)s;
  }
  void copy_in(const View& dst, const View& src_host) {
#ifdef DT_HAVE_CUDA
    if (cuda_) return cuda_->copy_in(dst.data, src_host.data, dst.bytes());
#endif
    std::memcpy(dst.data, src_host.data, dst.bytes());
  }
  void compute_after_fill(int s) {
#ifdef DT_HAVE_CUDA
    if (cuda_) cuda_->compute_after_fill(s);
#endif
    (void)s;
  }
  void drain_after_compute(int s) {
#ifdef DT_HAVE_CUDA
    if (cuda_) cuda_->drain_after_compute(s);
#endif
    (void)s;
  }
  void copy_out(const View& dst_host, const View& src) {
#ifdef DT_HAVE_CUDA
    if (cuda_) return cuda_->copy_out(dst_host.data, src.data, src.bytes());
#endif
    std::memcpy(dst_host.data, src.data, src.bytes());
  }
  void end_drain(int s) {
#ifdef DT_HAVE_CUDA
    if (cuda_) cuda_->end_drain(s);
#endif
    (void)s;
  }
  void finish() {
#ifdef DT_HAVE_CUDA
    if (cuda_) cuda_->finish();
#endif
  }

 private:
#ifdef DT_HAVE_CUDA
  std::unique_ptr<cuda::OffloadPipeline> cuda_;
#endif
};

// Elements [begin, begin + n) of tensor k, at element `at` of its chunk's staging slot.
struct Piece {
  size_t k = 0;
  int64_t begin = 0, n = 0, at = 0;
};

// Which views of tensor t are staged.
struct Staged {
  bool m = false, v = false, master = false, remainder = false;
};
Staged staged_views(const AdamWTensor& t, const AdamWOffload& off) {
  const auto host = [](const View& v) { return !v.empty() && v.device == core::Device::cpu; };
  Staged s;
  s.m = off.moments && host(t.m);
  s.v = off.moments && host(t.v);
  s.remainder = off.master && host(t.remainder);
  s.master = off.master && t.remainder.empty() && host(t.master);
  return s;
}

}  // namespace

int64_t adamw_offload_staging_bytes(const AdamWOffload& off, DType moment_dt, int master_bytes) {
  const int64_t per = (off.moments ? 2 * int64_t(core::dtype_size(moment_dt)) : 0) +
                      (off.master ? master_bytes : 0);
  return 2 * aligned(off.chunk) * per;
}

void adamw_step_offloaded(std::span<const AdamWTensor> tensors, const AdamWArgs& args,
                          const AdamWOffload& off) {
  Args c("adamw_step_offloaded");
  if (tensors.empty()) return;
  DT_CHECK(off.chunk >= kAlign, "ops::", c.op(), ": chunk = ", off.chunk, " elements (at least ",
           kAlign, ")");
  // The device is the gradients'; a staged view must be a host view, every other one on it.
  const core::Device dev = tensors[0].grad.device;
  DType moment_dt = tensors[0].m.dtype, master_dt = DType::f32;
  bool any_master = false, any_remainder = false;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const AdamWTensor& t = tensors[k];
    const Staged s = staged_views(t, off);
    const std::string tag = "tensor " + std::to_string(k) + " ";
    DT_CHECK(t.grad.device == dev, "ops::", c.op(), ": ", tag, "grad is on ",
             core::device_name(t.grad.device), " but tensor 0's on ", core::device_name(dev));
    if (t.grad.numel() == 0) continue;  // nothing to stage (its views may be null)
    DT_CHECK(s.m == off.moments && s.v == off.moments, "ops::", c.op(), ": ", tag,
             "m and v must be host views with offloaded moments (and only then): m is on ",
             core::device_name(t.m.device));
    DT_CHECK(t.m.dtype == moment_dt, "ops::", c.op(), ": ", tag, "m is ",
             core::dtype_name(t.m.dtype), " but tensor 0's is ", core::dtype_name(moment_dt));
    any_master = any_master || s.master;
    any_remainder = any_remainder || s.remainder;
    if (s.remainder) master_dt = DType::u16;
  }
  DT_CHECK(!(any_master && any_remainder), "ops::", c.op(),
           ": fp32 masters and remainders in one call");

  // The chunks: consecutive pieces of tensors, at most off.chunk (aligned) elements each.
  std::vector<std::vector<Piece>> chunks(1);
  int64_t used = 0;
  const int64_t cap = aligned(off.chunk);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const int64_t n = tensors[k].grad.numel();
    for (int64_t b = 0; b < n;) {
      if (cap - used < kAlign) {
        chunks.emplace_back();
        used = 0;
      }
      const int64_t len = std::min(n - b, (cap - used) / kAlign * kAlign);
      chunks.back().push_back({k, b, len, used});
      used += aligned(len);
      b += len;
    }
  }

  // Two staging slots on the device.
  const bool stage_master = any_master || any_remainder;
  core::Buffer slot_m[2], slot_v[2], slot_p[2];
  for (int s = 0; s < 2; ++s) {
    if (off.moments) {
      slot_m[s] = core::Buffer(dev, moment_dt, {cap}, "offloaded exp_avg staging");
      slot_v[s] = core::Buffer(dev, moment_dt, {cap}, "offloaded exp_avg_sq staging");
    }
    if (stage_master) slot_p[s] = core::Buffer(dev, master_dt, {cap}, "offloaded master staging");
  }
  Pipeline pipe(dev);
  std::vector<Staged> staged;
  for (const AdamWTensor& t : tensors) staged.push_back(staged_views(t, off));
  const auto stage_of = [&](const View& slot, const Piece& p) { return slot.slice(p.at, p.n); };
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const int s = int(ci % 2);
    const std::vector<Piece>& pieces = chunks[ci];
    pipe.begin_fill(s);
    for (const Piece& p : pieces) {
      const AdamWTensor& t = tensors[p.k];
      const Staged& g = staged[p.k];
      if (g.m) pipe.copy_in(stage_of(slot_m[s], p), t.m.slice(p.begin, p.n));
      if (g.v) pipe.copy_in(stage_of(slot_v[s], p), t.v.slice(p.begin, p.n));
      if (g.master) pipe.copy_in(stage_of(slot_p[s], p), t.master.slice(p.begin, p.n));
      if (g.remainder) pipe.copy_in(stage_of(slot_p[s], p), t.remainder.slice(p.begin, p.n));
    }
    pipe.compute_after_fill(s);
    std::vector<AdamWTensor> step;
    for (const Piece& p : pieces) {
      const AdamWTensor& t = tensors[p.k];
      const Staged& g = staged[p.k];
      const auto part = [&](const View& v) { return v.empty() ? v : v.slice(p.begin, p.n); };
      AdamWTensor u;
      u.grad = part(t.grad);
      u.compute_copy = part(t.compute_copy);
      u.master = g.master ? stage_of(slot_p[s], p) : part(t.master);
      u.remainder = g.remainder ? stage_of(slot_p[s], p) : part(t.remainder);
      u.m = g.m ? stage_of(slot_m[s], p) : part(t.m);
      u.v = g.v ? stage_of(slot_v[s], p) : part(t.v);
      u.weight_decay = t.weight_decay;
      u.index = t.index + p.begin;
      step.push_back(u);
    }
    adamw_step_multi(step, args);
    pipe.drain_after_compute(s);
    for (const Piece& p : pieces) {
      const AdamWTensor& t = tensors[p.k];
      const Staged& g = staged[p.k];
      if (g.m) pipe.copy_out(t.m.slice(p.begin, p.n), stage_of(slot_m[s], p));
      if (g.v) pipe.copy_out(t.v.slice(p.begin, p.n), stage_of(slot_v[s], p));
      if (g.master) pipe.copy_out(t.master.slice(p.begin, p.n), stage_of(slot_p[s], p));
      if (g.remainder) pipe.copy_out(t.remainder.slice(p.begin, p.n), stage_of(slot_p[s], p));
    }
    pipe.end_drain(s);
  }
  pipe.finish();
}

}  // namespace deltatron::ops
