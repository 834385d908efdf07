// test_golden_lora on CUDA (label gpu): the same test body as tests/test_golden_lora.cpp, with the
// model on Device::cuda in fp32 (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
#include "test_golden_lora.cpp"  // NOLINT(bugprone-suspicious-include)
