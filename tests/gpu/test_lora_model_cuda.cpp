// test_lora_model on CUDA (label gpu): the same test body as tests/test_lora_model.cpp, with the
// model on Device::cuda (fp32, and bf16 against fp32) (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
#include "test_lora_model.cpp"  // NOLINT(bugprone-suspicious-include)
