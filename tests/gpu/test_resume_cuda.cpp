// test_resume on CUDA (label gpu): the same test body as tests/test_resume.cpp, training on
// Device::cuda (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
#include "test_resume.cpp"  // NOLINT(bugprone-suspicious-include)
