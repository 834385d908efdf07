// `deltatron commbench` (commbench.h): timed collectives over the job's communicator.
#include "train/commbench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/buffer.h"
#include "core/error.h"
#include "ops/device.h"
#include "ops/tensor.h"
#include "train/parallel.h"

namespace deltatron::train {

namespace {

// The bus-bandwidth factor of a collective over n ranks (commbench.h).
double bus_factor(const std::string& op, int n) {
  if (n <= 1) return 0;
  return op == "all_reduce" ? 2.0 * (n - 1) / n : double(n - 1) / n;
}

// Both ends of the timing: the device's work done on every rank.
void sync(const Parallel& par, core::Device dev) {
  ops::synchronize(dev);
  if (par.size() > 1) par.comm->barrier();
}

// all_reduce of r + 1 on rank r: n (n + 1) / 2 everywhere.
void check_sum(const Parallel& par, core::Device dev) {
  const int64_t n = 1024;
  core::Buffer b(dev, core::DType::f32, {n}, "commbench check");
  ops::fill(b, float(par.rank() + 1), n);
  par.comm->all_reduce(b, dist::ReduceOp::sum);
  std::vector<float> host(size_t(n), 0.f);
  ops::copy_to_host(b, host.data());
  const float want = float(par.size()) * float(par.size() + 1) / 2;
  for (int64_t i = 0; i < n; ++i)
    DT_CHECK(host[size_t(i)] == want, "commbench: all_reduce check failed on rank ", par.rank(),
             ": element ", i, " is ", host[size_t(i)], ", expected ", want);
}

}  // namespace

void run_commbench(const CommBenchOptions& o) {
  DT_CHECK(o.device == "cuda" || o.device == "cpu", "commbench: unknown device '", o.device, "'");
  DT_CHECK(o.dtype == "f32" || o.dtype == "bf16", "commbench: --dtype f32 or bf16, got '", o.dtype,
           "'");
  DT_CHECK(o.min_bytes > 0 && o.max_bytes >= o.min_bytes && o.factor >= 2,
           "commbench: need 0 < --min-bytes <= --max-bytes and --factor >= 2");
  DT_CHECK(o.iters > 0 && o.warmup >= 0, "commbench: --iters must be > 0, --warmup >= 0");
  for (const std::string& op : o.ops)
    DT_CHECK(op == "all_reduce" || op == "reduce_scatter" || op == "all_gather",
             "commbench: unknown operation '", op, "' (all_reduce, reduce_scatter, all_gather)");
  const core::Device dev = o.device == "cuda" ? core::Device::cuda : core::Device::cpu;
  const Parallel par = setup_parallel(dev, "deltatron commbench");
  ops::check_device(dev);
  check_sum(par, dev);
  const core::DType dt = o.dtype == "bf16" ? core::DType::bf16 : core::DType::f32;
  const int64_t esize = o.dtype == "bf16" ? 2 : 4, n = par.size();
  if (par.root())
    std::printf(
        "commbench: %s, %lld rank(s) on %s, %s, %lld timed calls after %lld\n%-15s %12s "
        "%12s %11s %11s %12s %12s\n",
        par.comm->backend(), static_cast<long long>(n), ops::device_name(dev).c_str(),
        o.dtype.c_str(), static_cast<long long>(o.iters), static_cast<long long>(o.warmup),
        "operation", "bytes", "elements", "time us", "max us", "algbw GB/s", "busbw GB/s");
  nlohmann::json results = nlohmann::json::array();
  std::map<std::string, double> peak, avg;
  for (const std::string& op : o.ops) {
    int64_t sizes = 0;
    for (int64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= o.factor) {
      // Whole elements, in n equal blocks (reduce_scatter, all_gather).
      const int64_t elems = std::max<int64_t>(n, bytes / esize / n * n);
      core::Buffer buf(dev, dt, {elems}, "commbench buffer");
      ops::zero(buf);  // sums of zeros stay finite
      core::Buffer part(dev, dt, {elems / n}, "commbench block");
      const core::View block(static_cast<char*>(buf.data()) + (elems / n) * par.rank() * esize, dt,
                             dev, {elems / n});
      const auto call = [&] {
        if (op == "all_reduce")
          par.comm->all_reduce(buf, dist::ReduceOp::sum);
        else if (op == "reduce_scatter")
          par.comm->reduce_scatter(buf, part);
        else
          par.comm->all_gather(block, buf);  // in place
      };
      for (int64_t i = 0; i < o.warmup; ++i) call();
      sync(par, dev);
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < o.iters; ++i) call();
      sync(par, dev);
      const double t =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
          double(o.iters);
      const double t_avg = all_reduce_sum(par, t) / double(n);
      const double t_max = double(all_reduce_max(par, int64_t(t * 1e9))) / 1e9;
      const double real_bytes = double(elems * esize);
      const double algbw = real_bytes / t_avg / 1e9, busbw = algbw * bus_factor(op, int(n));
      peak[op] = std::max(peak[op], busbw);
      avg[op] += busbw;
      ++sizes;
      results.push_back({{"op", op},
                         {"bytes", elems * esize},
                         {"elements", elems},
                         {"time_us", t_avg * 1e6},
                         {"time_us_max", t_max * 1e6},
                         {"algbw_gbps", algbw},
                         {"busbw_gbps", busbw}});
      if (par.root())
        std::printf("%-15s %12lld %12lld %11.1f %11.1f %12.2f %12.2f\n", op.c_str(),
                    static_cast<long long>(elems * esize), static_cast<long long>(elems),
                    t_avg * 1e6, t_max * 1e6, algbw, busbw);
    }
    avg[op] /= double(std::max<int64_t>(1, sizes));
  }
  if (!par.root()) return;
  for (const auto& [op, v] : avg)
    std::printf("commbench: %s bus bandwidth: peak %.2f GB/s, average over the sizes %.2f GB/s\n",
                op.c_str(), peak[op], v);
  if (!o.json_out.empty()) {
    const nlohmann::json j = {{"backend", par.comm->backend()},
                              {"world_size", n},
                              {"device", ops::device_name(dev)},
                              {"dtype", o.dtype},
                              {"iters", o.iters},
                              {"warmup", o.warmup},
                              {"results", results},
                              {"peak_busbw_gbps", peak},
                              {"avg_busbw_gbps", avg}};
    std::ofstream(o.json_out) << j.dump(1) << "\n";
  }
}

}  // namespace deltatron::train
