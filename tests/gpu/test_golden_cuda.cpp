// test_golden on CUDA (label gpu): the same test body as tests/test_golden.cpp, with the model on
// Device::cuda in fp32 (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
#include "test_golden.cpp"  // NOLINT(bugprone-suspicious-include)
