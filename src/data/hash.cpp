// The 128-bit content hash shared by the dataset cache and the image file checks.
#include "data/hash.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <vector>

namespace deltatron::data {

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr size_t kBlock = size_t(1) << 20;

// One block: four lanes over 8-byte words (word k goes to lane k % 4), a zero-padded tail, then
// the lanes folded into two words with the block length.
Hash128 hash_block(const uint8_t* p, size_t n, uint64_t seed) {
  uint64_t acc[4] = {seed + kP1, seed ^ kP2, seed + 0x165667B19E3779F9ULL, seed - kP1};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      acc[l] = std::rotl(acc[l] + w * kP2, 31) * kP1;
    }
  for (int l = 0; i < n; ++l, i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, std::min<size_t>(8, n - i));
    acc[l] = std::rotl(acc[l] + w * kP2, 31) * kP1;
  }
  // Both output words depend on all four lanes.
  const uint64_t a = hash_mix(acc[0] ^ std::rotl(acc[2], 31)),
                 b = hash_mix(acc[1] ^ std::rotl(acc[3], 27));
  return Hash128{hash_mix((a + b) ^ n), hash_mix(a ^ std::rotl(b, 32) ^ ~n)};
}

}  // namespace

uint64_t hash_mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

Hash128 hash_bytes(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  const int64_t nb = static_cast<int64_t>((n + kBlock - 1) / kBlock);
  std::vector<Hash128> blocks(nb);
#pragma omp parallel for schedule(static) if (nb > 1)
  for (int64_t b = 0; b < nb; ++b) {
    const size_t off = static_cast<size_t>(b) * kBlock;
    blocks[b] = hash_block(p + off, std::min(kBlock, n - off), seed + static_cast<uint64_t>(b));
  }
  Hash128 h{hash_mix(seed ^ n ^ kP1), hash_mix(seed + n + kP2)};
  for (const Hash128& b : blocks) {
    h.lo = hash_mix(h.lo ^ b.lo) + h.hi;
    h.hi = hash_mix(h.hi + b.hi) ^ h.lo;
  }
  return h;
}

std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

}  // namespace deltatron::data
