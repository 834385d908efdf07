// The CUDA backend's allocator: stream-ordered allocations from the device's default memory pool
// (cudaMallocAsync on the legacy default stream; the pool keeps freed memory cached, so
// steady-state steps do not call the driver), with live/peak accounting and an out-of-memory
// error that says what was being allocated, what the model already holds, and the caller's hint.
// Registered as core::allocator(Device::cuda) by install_allocator().
#pragma once

#include <cstdint>
#include <string>

namespace deltatron::cuda {

// Registers the pool allocator for Device::cuda (idempotent; the first call sets up the pool).
void install_allocator();

// Text appended to out-of-memory errors (the planned activation size and token budget); set by
// the model before a step.
void set_oom_hint(std::string hint);
// Bytes held by live allocations now and at most since the last reset (what the model asked
// for; the pool may hold more).
int64_t live_bytes();
int64_t peak_live_bytes();
void reset_peak_live_bytes();

}  // namespace deltatron::cuda
