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

// x_ND[n] (= or +=) sum_b w_NB[n,b] table_VD[idx_NB[n,b]]. Throws core::Error for an index
// outside [0, V).
template <typename T>
void embedding_bag_fwd(const int32_t* idx_NB, const T* w_NB, const T* table_VD, int64_t N,
                       int64_t B, int64_t V, int64_t D, T* x_ND, bool accumulate);

// dtable_VD[idx_NB[n,b]] += w_NB[n,b] dx_ND[n] (rows in order, deterministic).
template <typename T>
void embedding_bag_bwd(const int32_t* idx_NB, const T* w_NB, const T* dx_ND, int64_t N, int64_t B,
                       int64_t V, int64_t D, T* dtable_VD);

}  // namespace deltatron::cpu
