// test_golden_vl on CUDA (label gpu): the same test body as tests/test_golden_vl.cpp, with the
// model (vision tower included) on Device::cuda in fp32, and bf16 against fp32
// (tests/test_device.h).
#define DT_TEST_ON_CUDA 1
// ranks_run.h (worst_rel_rms) also defines run_ranks, which needs the CLI's path; no test here
// starts the CLI, and GPU test targets do not define DT_BINARY.
#define DT_BINARY "deltatron"
#include "test_golden_vl.cpp"  // NOLINT(bugprone-suspicious-include)
