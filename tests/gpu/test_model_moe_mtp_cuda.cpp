// test_model_moe_mtp on CUDA (label gpu): the same test body as tests/test_model_moe_mtp.cpp, with
// the model on Device::cuda in fp32 (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
#include "test_model_moe_mtp.cpp"  // NOLINT(bugprone-suspicious-include)
