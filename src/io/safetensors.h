// safetensors files: a validating memory-mapped reader, an atomic writer, and their sharded forms.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace deltatron::io {

// Bytes per element of a safetensors dtype string ("F32", "BF16", "I64", ...). Sub-byte dtypes
// are not supported. Throws core::Error for an unknown dtype.
int64_t dtype_size(const std::string& dtype);
bool dtype_known(const std::string& dtype);
// True for the dtypes that convert to and from float32: F32, BF16, F16.
bool dtype_is_float(const std::string& dtype);

// Scalar conversions. float -> bf16/f16 round to nearest, ties to even; NaN stays NaN.
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);
// n floats stored as dtype (F32, BF16 or F16; the scalar conversions above) into dst
// (n * dtype_size bytes): what the writer stores for float data.
void float_to_dtype(const float* src, int64_t n, const std::string& dtype, uint8_t* dst);

// A contiguous run of a tensor's elements (row-major flat indices [offset, offset + count)).
struct ElementRun {
  int64_t offset = 0, count = 0;
};

// One tensor entry of a header. Offsets are relative to the start of the data section.
struct TensorInfo {
  std::string dtype;
  core::Shape shape;
  uint64_t begin = 0, end = 0;
};

// A safetensors file mapped read-only. The header is validated on open; every error is a
// one-line core::Error naming the file (and the tensor where there is one). The object owns the
// mapping; bytes() views stay valid while it lives.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws when absent

  // The tensor's bytes as stored (little-endian), for any dtype.
  std::span<const uint8_t> bytes(const std::string& name) const;
  // The tensor converted to float32; throws unless its dtype is F32, BF16 or F16.
  core::Tensor to_float(const std::string& name) const;
  // Only the elements of `runs`, converted to float32 one after the other into out (the sum of
  // the counts): a slice of the tensor reads only its own bytes of the mapping. Throws for a
  // non-float dtype or a run outside the tensor.
  void read_float(const std::string& name, std::span<const ElementRun> runs, float* out) const;

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

// A write record: what the writer stores for one tensor (not a core::View): dtype and shape as they
// go into the file, and exactly one data source: f32 (numel floats, converted to dtype, which must
// be F32/BF16/F16) or bytes (numel * dtype_size bytes, written unchanged). The pointed-to data must
// outlive the call.
struct TensorRecord {
  std::string dtype;
  core::Shape shape;
  const float* f32 = nullptr;
  std::span<const uint8_t> bytes;
  // Or produced when written (nothing else set): fills dst with the numel * dtype_size bytes, so a
  // file of many tensors holds one tensor in memory at a time (the optimizer state of a large
  // model kept on the device).
  std::function<void(uint8_t* dst)> fill = nullptr;
};

// Byte size of a record's data in the file (numel * dtype_size).
int64_t stored_bytes(const TensorRecord& t);

// Writes one safetensors file atomically (path.tmp-<pid>, fsync, rename, fsync of the directory).
// Tensors are laid out in name order; the header is padded with spaces to a multiple of 8 bytes.
// metadata, when not empty, is stored as "__metadata__". On failure no file appears at path and
// an existing one is left untouched.
void write_safetensors(const std::string& path, const std::map<std::string, TensorRecord>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

inline constexpr const char* kSingleWeightsName = "model.safetensors";
inline constexpr const char* kWeightsIndexName = "model.safetensors.index.json";

// The weights of a checkpoint directory: model.safetensors (preferred when present, as HF does)
// or model.safetensors.index.json with its shards. Errors name the directory, index, shard and
// tensor: a mapped shard that is missing, an indexed tensor absent from its shard, a shard
// tensor that the index does not map to that shard.
class SafetensorsSet {
 public:
  explicit SafetensorsSet(const std::string& dir);

  const std::vector<std::string>& names() const { return names_; }  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }
  std::span<const uint8_t> bytes(const std::string& name) const {
    return file_of(name).bytes(name);
  }
  core::Tensor to_float(const std::string& name) const { return file_of(name).to_float(name); }
  void read_float(const std::string& name, std::span<const ElementRun> runs, float* out) const {
    file_of(name).read_float(name, runs, out);
  }
  size_t num_files() const { return files_.size(); }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
  std::vector<std::string> names_;
};

// Writes tensors into the existing directory dir as shards of at most max_shard_bytes of tensor
// data each (a larger tensor gets a shard of its own), filled greedily in name order and named
// model-00001-of-0000N.safetensors, plus model.safetensors.index.json with metadata.total_size
// and weight_map. One shard is written as model.safetensors with no index. Returns the file
// names written (relative to dir). Every file is written atomically.
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::map<std::string, TensorRecord>& tensors,
    const std::map<std::string, std::string>& metadata, int64_t max_shard_bytes);

}  // namespace deltatron::io
