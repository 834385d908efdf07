#!/usr/bin/env bash
# Nsight Compute sections of the chunked GDN kernels (the forward's prep + states, the backward's
# prep, states-recompute, dstate, dqk, wy) for the first problem test_cuda_gdn's GdnTiming runs
# (2b shape, 14-segment pack, bf16, the default kernel layout).
#   tools/gpu/gdn_profile.sh RUNTIME_DIR > report.txt   (GPU machine; test_cuda_gdn in RUNTIME_DIR)
set -uo pipefail
rt=${1:?usage: gdn_profile.sh RUNTIME_DIR}
ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
export DT_TEST_DATA_DIR=$PWD/tests/data LD_LIBRARY_PATH=$rt/lib:/usr/local/cuda/lib64
"$ncu_bin" -k regex:gdn_ --launch-count ${COUNT:-7} --section SpeedOfLight --section Occupancy \
  --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
  --section SchedulerStats --section ComputeWorkloadAnalysis \
  "$rt/test_cuda_gdn" --gtest_filter='GdnTiming.*'
