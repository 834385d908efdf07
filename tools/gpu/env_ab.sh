#!/usr/bin/env bash
# One binary under two environments, alternated by tools/gpu/compare_builds.sh (same batches, same
# card): for switches read from the environment (e.g. DT_GDN_KERNELS). "new" is the
# first setting, "old" the second. Usage (GPU machine, after session_call.sh unpacked the runtime):
#   tools/gpu/env_ab.sh "DT_GDN_KERNELS=v4" "DT_GDN_KERNELS=v3" OUT_DIR [bench args]
set -uo pipefail
new_env=$1 old_env=$2 out=$3
shift 3
rt=/tmp/dt-runtime/runtime
mkdir -p "$out"
for w in new old; do
  e=$new_env; [[ $w == old ]] && e=$old_env
  printf '#!/usr/bin/env bash\nexec env %s %q "$@"\n' "$e" "$rt/deltatron" >"$out/deltatron_$w"
  chmod +x "$out/deltatron_$w"
done
nccl_dir=$(tools/gpu/nccl_path.sh)
export LD_LIBRARY_PATH=$rt/lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir} OMP_WAIT_POLICY=PASSIVE
[[ $# -gt 0 ]] || set -- --preset 2b
echo "== env A/B: new = $new_env, old = $old_env"
tools/gpu/compare_builds.sh "$out/deltatron_new" "$out/deltatron_old" "$out" "$@"
