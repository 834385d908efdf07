// What every GPU block needs: the config, the parameters, the pack on the device, the dtype.
#pragma once

#include <string>
#include <vector>

#include "data/pack.h"
#include "gpu/buf.h"
#include "gpu/params.h"
#include "model/config.h"

namespace deltatron::gpu {

// A pack's index tensors on the device (segment bounds also kept on the host for launch plans).
struct DevPack {
  const data::Pack& host;
  int64_t N;
  int nseg;
  Buf ids, targets, pos3, cu;
  explicit DevPack(const data::Pack& p)
      : host(p),
        N(p.N),
        nseg(p.num_samples()),
        ids(upload_i32(p.input_ids.data(), p.N, "pack input_ids")),
        targets(upload_i32(p.targets.data(), p.N, "pack targets")),
        pos3(upload_i32(p.position_ids.data(), 3 * p.N, "pack position_ids")),
        cu(upload_i32(p.cu_seqlens_padded.data(), p.num_samples() + 1, "pack cu_seqlens")) {}
  const int32_t* cu_host() const { return host.cu_seqlens_padded.data(); }
};

struct Ctx {
  const model::Config& c;
  Params& p;
  const DevPack& pk;
  DType dt() const { return p.dt(); }
  int64_t N() const { return pk.N; }
  Buf act(int64_t n, const char* what) const { return Buf(n, p.dt(), what); }
  Buf f32(int64_t n, const char* what) const { return Buf(n, DType::f32, what); }
};

}  // namespace deltatron::gpu
