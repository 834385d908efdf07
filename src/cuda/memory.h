// CUDA memory transfers and byte fills behind ops/tensor.h: host <-> device copies, zeroing,
// int32 fills and device synchronisation. Every call synchronises (except zero, which is queued
// on the legacy default stream like the kernels).
#pragma once

#include <cstddef>
#include <cstdint>

namespace deltatron::cuda {

// dst (device) = src (host), `bytes` bytes; returns when the copy is done.
void copy_from_host(void* dst, const void* src_host, size_t bytes);
// dst (host) = src (device), `bytes` bytes; waits for the queued work that writes src.
void copy_to_host(void* dst_host, const void* src, size_t bytes);
// Every byte of x[0, bytes) = 0 (cudaMemsetAsync on the legacy default stream).
void zero(void* x, size_t bytes);
// x[i] = value for i < n, int32 (staged through the host; synchronises).
void fill_i32(int32_t* x, int32_t value, int64_t n);
// Waits for all work queued on the current device.
void synchronize();

// Process-wide count of device -> host copies made by the CUDA backend (copy_to_host, the host
// path of moe_permute, the SYNCS functions of cuda/moe.h, the optimizer's norm read-back), for
// the tests that hold the model to a per-pack constant number of them. Thread-safe.
int64_t device_to_host_copies();
// Adds one to that count (called by each such copy).
void note_device_to_host_copy();

}  // namespace deltatron::cuda
