// The copy pipeline of the offloaded training state (ops/offload.h): host-to-device copies on one
// stream, the step's kernels on the legacy default stream (where every kernel runs), and
// device-to-host copies on a third, ordered by events so that chunk k + 1 is copied in and chunk
// k - 1 copied out while chunk k is stepped. Two staging slots alternate; a slot is refilled only
// after its last copy-out has finished.
#pragma once

#include <cstddef>

namespace deltatron::cuda {

class OffloadPipeline {
 public:
  OffloadPipeline();  // the copy-in stream waits for the work queued so far (staging allocations)
  ~OffloadPipeline();
  OffloadPipeline(const OffloadPipeline&) = delete;
  OffloadPipeline& operator=(const OffloadPipeline&) = delete;

  // Slot s (0 or 1) is about to be refilled: copies into it wait for its last copy-out.
  void begin_fill(int s);
  void copy_in(void* dst_device, const void* src_host, size_t bytes);
  // The kernels queued next (legacy default stream) wait for the copies into slot s.
  void compute_after_fill(int s);
  // The copies out of slot s queued next wait for the kernels queued so far.
  void drain_after_compute(int s);
  void copy_out(void* dst_host, const void* src_device, size_t bytes);
  // Marks the end of slot s's copies out.
  void end_drain(int s);
  // Waits until every copy out has landed in host memory.
  void finish();

 private:
  void* in_ = nullptr;   // cudaStream_t
  void* out_ = nullptr;  // cudaStream_t
  void* filled_[2] = {nullptr, nullptr};
  void* stepped_[2] = {nullptr, nullptr};
  void* drained_[2] = {nullptr, nullptr};
  bool used_[2] = {false, false};
};

}  // namespace deltatron::cuda
