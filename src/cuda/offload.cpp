// The offloaded state's copy pipeline (offload.h).
#include "cuda/offload.h"

#include <cuda_runtime_api.h>

#include "cuda/device.h"

namespace deltatron::cuda {

namespace {
cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t ev(void* e) { return static_cast<cudaEvent_t>(e); }
void* new_event() {
  cudaEvent_t e = nullptr;
  DT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}
}  // namespace

OffloadPipeline::OffloadPipeline() {
  cudaStream_t s = nullptr;
  DT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  in_ = s;
  DT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  out_ = s;
  for (int i = 0; i < 2; ++i) {
    filled_[i] = new_event();
    stepped_[i] = new_event();
    drained_[i] = new_event();
  }
  // The staging buffers come from the stream-ordered pool on the default stream.
  cudaEvent_t start = static_cast<cudaEvent_t>(new_event());
  DT_CUDA_CHECK(cudaEventRecord(start, 0));
  DT_CUDA_CHECK(cudaStreamWaitEvent(st(in_), start, 0));
  DT_CUDA_CHECK(cudaEventDestroy(start));
}

OffloadPipeline::~OffloadPipeline() {
  (void)cudaStreamSynchronize(st(out_));
  (void)cudaStreamSynchronize(st(in_));
  for (int i = 0; i < 2; ++i) {
    (void)cudaEventDestroy(ev(filled_[i]));
    (void)cudaEventDestroy(ev(stepped_[i]));
    (void)cudaEventDestroy(ev(drained_[i]));
  }
  (void)cudaStreamDestroy(st(in_));
  (void)cudaStreamDestroy(st(out_));
}

void OffloadPipeline::begin_fill(int s) {
  if (used_[s]) DT_CUDA_CHECK(cudaStreamWaitEvent(st(in_), ev(drained_[s]), 0));
  used_[s] = true;
}

void OffloadPipeline::copy_in(void* dst, const void* src, size_t bytes) {
  if (bytes) DT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st(in_)));
}

void OffloadPipeline::compute_after_fill(int s) {
  DT_CUDA_CHECK(cudaEventRecord(ev(filled_[s]), st(in_)));
  DT_CUDA_CHECK(cudaStreamWaitEvent(0, ev(filled_[s]), 0));
}

void OffloadPipeline::drain_after_compute(int s) {
  DT_CUDA_CHECK(cudaEventRecord(ev(stepped_[s]), 0));
  DT_CUDA_CHECK(cudaStreamWaitEvent(st(out_), ev(stepped_[s]), 0));
}

void OffloadPipeline::copy_out(void* dst, const void* src, size_t bytes) {
  if (bytes) DT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st(out_)));
}

void OffloadPipeline::end_drain(int s) {
  DT_CUDA_CHECK(cudaEventRecord(ev(drained_[s]), st(out_)));
}

void OffloadPipeline::finish() {
  DT_CUDA_CHECK(cudaStreamSynchronize(st(out_)));
  // Later work on the default stream (the staging buffers' release) follows the copies.
  DT_CUDA_CHECK(cudaStreamSynchronize(st(in_)));
}

}  // namespace deltatron::cuda
