// A fast 128-bit non-cryptographic content hash (dataset cache keys and checksums, image files).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace deltatron::data {

struct Hash128 {
  uint64_t lo = 0, hi = 0;
  bool operator==(const Hash128&) const = default;
};

// Hash of n bytes: four lanes of acc = rotl(acc + w * P2, 31) * P1 over 8-byte words per 1 MiB
// block (blocks hashed in parallel with OpenMP), the blocks folded in order. The same bytes and
// seed give the same value on every run and machine (little-endian).
Hash128 hash_bytes(const void* data, size_t n, uint64_t seed = 0);

// The seed of image file content hashes (ImageRef::hash; vision_files.cpp, dataset.cpp).
constexpr uint64_t kImageHashSeed = 0x1a4e;

// The murmur3 finaliser (a 64-bit bijective mixer).
uint64_t hash_mix(uint64_t x);

// 16 lowercase hex digits.
std::string hex64(uint64_t x);

}  // namespace deltatron::data
