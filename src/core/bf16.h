// bf16 bit arithmetic shared by host, CPU and CUDA code: the roundings the optimizer state uses
// (nearest-even, nearest with ties away from zero, stochastic) and the lean fp32 master, an fp32
// value kept as a bf16 weight plus a 16-bit remainder (training.master = "remainder").
//
// The lean master. An fp32 value p has the 32 bits P = (u << 16) | lo (u the high half, lo the
// low half). It is stored as
//   weight    = u + (lo >= 0x8000)   (mod 2^16)  the bf16 nearest to p, ties away from zero
//   remainder = lo
// and rebuilt as P = ((weight - (remainder >= 0x8000)) mod 2^16) << 16 | remainder: a bijection
// of the 2^32 bit patterns, so the master is exact bit for bit (as Megatron-Core's
// store_param_remainders / TransformerEngine's multi_tensor_adam_param_remainder, which keep the
// remainder as the signed int16 lo and undo the round-up when it is negative).
//
// Why ties away from zero and not round-to-nearest-even: with the weight fixed to the nearest
// bf16 of p, the fp32 values sharing one weight must number exactly 2^16 for 16 bits to tell them
// apart. Nearest rounding gives every weight the 2^16 - 1 values strictly within half a bf16 ulp
// plus the ties at its two ends; ties-to-even hands both ties of an even weight to it (2^16 + 1
// values) and none to an odd one (2^16 - 1), so no 16-bit remainder can hold an RNE-rounded
// master exactly. Ties away from zero hands each weight exactly one tie (the one on its side of
// zero: magnitudes only grow, so the upper tie of every magnitude). It differs from RNE only on
// exact ties (one fp32 value in 65536), and the fp32-master mode rounds its bf16 compute copies
// the same way (bf16_round_ties_away), so both modes compute with the same weights and train
// bitwise alike.
//
// Non-finite masters: infinities are exact (lo = 0); a NaN whose high half is 0x7FFF or 0xFFFF
// with lo >= 0x8000 wraps to a zero weight (its master is still rebuilt exactly, so a save finds
// it). Training never gets there: a non-finite gradient norm skips the step, and a finite update
// of a finite master is finite or infinite, never NaN.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DT_HOST_DEVICE __host__ __device__
#else
#define DT_HOST_DEVICE
#endif

namespace deltatron::core {

DT_HOST_DEVICE inline uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

DT_HOST_DEVICE inline float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// The exact fp32 value of a bf16.
DT_HOST_DEVICE inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }

// Round to nearest, ties to even (NaN stays a quiet NaN): the rounding of activations and of
// fp32 values that must round-trip (a bf16 value converts back unchanged).
DT_HOST_DEVICE inline uint16_t bf16_round_nearest_even(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Round to nearest, ties away from zero: the bf16 compute copy of a parameter, in both master
// modes (see the top of this file).
DT_HOST_DEVICE inline uint16_t bf16_round_ties_away(float x) {
  const uint32_t u = f32_bits(x);
  return uint16_t((u >> 16) + ((u & 0xFFFFu) >= 0x8000u ? 1u : 0u));
}

// The lean master (top of the file): weight and remainder of p, and p from them.
DT_HOST_DEVICE inline void master_split(float p, uint16_t& weight, uint16_t& remainder) {
  const uint32_t u = f32_bits(p);
  remainder = uint16_t(u & 0xFFFFu);
  weight = uint16_t((u >> 16) + (remainder >= 0x8000u ? 1u : 0u));
}

DT_HOST_DEVICE inline float master_join(uint16_t weight, uint16_t remainder) {
  const uint16_t high = uint16_t(weight - (remainder >= 0x8000u ? 1u : 0u));
  return f32_from_bits((uint32_t(high) << 16) | remainder);
}

// Stochastic rounding to bf16 with 16 uniform random bits r (0 <= r < 2^16): the magnitude
// rounds up with probability (its distance to the bf16 below) / (one bf16 ulp), so the rounded
// value is unbiased; bf16 values and zeros are kept exactly. NaN stays a quiet NaN; a magnitude
// above the largest bf16 may round to infinity (never met by AdamW moments).
DT_HOST_DEVICE inline uint16_t bf16_round_stochastic(float x, uint32_t r) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);
  if ((u & 0x7FFFFFFFu) == 0x7F800000u) return uint16_t(u >> 16);
  return uint16_t((u + (r & 0xFFFFu)) >> 16);
}

// splitmix64's finaliser: a counter-based hash (every output bit depends on every input bit).
DT_HOST_DEVICE inline uint64_t hash64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// The random bits of the stochastic rounding: the key of one step (seed, step), then 64 bits per
// element counter. Counter-based, so the bits depend on (seed, step, element) only: not on the
// thread layout, the device or how the tensors are split into launches, and a resumed run draws
// the same bits as one that never stopped.
DT_HOST_DEVICE inline uint64_t random_key(uint64_t seed, uint64_t step) {
  return hash64(seed * 0x9E3779B97F4A7C15ull + hash64(step + 0x632BE59BD9B4E019ull));
}
DT_HOST_DEVICE inline uint64_t random_bits(uint64_t key, uint64_t counter) {
  return hash64(key + counter * 0x9E3779B97F4A7C15ull);
}

}  // namespace deltatron::core
