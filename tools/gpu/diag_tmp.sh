#!/usr/bin/env bash
set -u
mkdir -p /tmp/new && tar -xJf build/runtime.tar.xz -C /tmp/new
xz -dc build/old_lora_test.xz > /tmp/new/runtime/old_lora_test && chmod +x /tmp/new/runtime/old_lora_test
nccl_dir=$(tools/gpu/nccl_path.sh)
export DT_TEST_DATA_DIR=$PWD/tests/data LD_LIBRARY_PATH=/tmp/new/runtime/lib:/usr/local/cuda/lib64:$nccl_dir
for t in old_lora_test test_lora_model_cuda; do
  echo "== $t LoraModel.Bf16TracksFp32"
  timeout 60 /tmp/new/runtime/$t --gtest_filter='*Bf16*' 2>&1 | grep -v "^\[ RUN\|^\[       OK" | tail -6
done
echo "== test_dist_cuda"
timeout 120 /tmp/new/runtime/test_dist_cuda 2>&1 | tail -40
for t in test_golden_cuda test_gpu_model test_model_pack_cuda test_model_moe_mtp_cuda test_resume_cuda test_golden_lora_cuda; do
  timeout 120 /tmp/new/runtime/$t > /tmp/$t.log 2>&1 && echo "== $t PASS" || { echo "== $t FAIL"; grep -E "Failure|FAILED|rror" /tmp/$t.log | head -12; }
done
