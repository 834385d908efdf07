// test_step_scalars on CUDA (label gpu): the same test body as tests/test_step_scalars.cpp with
// every buffer, op, engine and trainer step on Device::cuda (tests/test_device.h): the device-side
// loss sums, norm, clip and skip bitwise the host code's, the gated AdamW kernel bitwise the
// host-factor one, the engine's device step bitwise clip + step, and one host read per trainer step
// (cuda::device_to_host_copies).
#define DT_TEST_ON_CUDA 1
#include "test_step_scalars.cpp"  // NOLINT(bugprone-suspicious-include)
