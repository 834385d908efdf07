// CPU reference for the token embedding lookup and its scatter-add backward.
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// x_ND[n] = table_VD[ids_N[n]]. Throws core::Error if an id is outside [0, V).
template <typename T>
void embedding_fwd(const int32_t* ids_N, const T* table_VD, int64_t N, int64_t V, int64_t D,
                   T* x_ND);

// dtable_VD[ids_N[n]] += dx_ND[n] (accumulate). Deterministic: tokens are summed in order.
template <typename T>
void embedding_bwd(const int32_t* ids_N, const T* dx_ND, int64_t N, int64_t D, T* dtable_VD);

}  // namespace deltatron::cpu
