// A tokenised JSONL dataset with an on-disk cache (built in parallel once, then mmapped).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/formats.h"
#include "data/pack.h"
#include "data/sample.h"

namespace deltatron::data {

class Tokenizer;
struct DatasetImageRecord;
struct Hash128;

struct DatasetOptions {
  FormatOptions format;
  bool use_cache = true;
  std::string cache_dir;       // "": <directory of the data file>/.deltatron-cache
  int64_t chunk_lines = 8192;  // lines per encode_batch call while building
  bool progress = true;        // progress on stderr (a bar on a terminal, else periodic lines)
};

// Tokenised samples, stored flat: tokens u32 [N], offsets u64 [S+1], source line u64 [S], and
// labels either as a bitmask (bit t set: labels[t] = tokens[t], else -100; used when every sample
// has only such labels, always true for text formats) or as i32 [N].
//
// Vision-language samples (chat rows with images, vision_data.h) store their expanded tokens and,
// per image, its grid and file (path as written, size, mtime, content hash); positions are
// recomputed and pixels re-read from the files by sample(). A cache whose image files are
// missing or changed (size or mtime differ and so does the content hash) is rebuilt.
//
// Cache: one file per (data content, tokenizer, options) in the cache directory, named
// "<data file name>.<key>.dtcache", key = 128-bit hash of: cache format version, the data file's
// bytes, the tokenizer's content_hash(), and every option that changes the result (format, loss
// mask mode, chat format and its options, resolved EOS id, append_eos, skip_bad_lines). Written to
// a temporary file and renamed, so readers never see a partial file. On load the header (magic,
// version, key), the exact file size implied by the header, and a checksum of the payload are
// verified; any mismatch (truncated, corrupt, other version) rebuilds the cache. Stale files of
// other keys are left alone. An unwritable cache directory only warns.
class Dataset {
 public:
  // Loads `path` (JSONL, formats.h), from the cache when a valid one exists.
  static Dataset load(const std::string& path, const Tokenizer& tok, const DatasetOptions& opt);

  int64_t size() const { return num_samples_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t length(int64_t i) const { return static_cast<int64_t>(offsets_[i + 1] - offsets_[i]); }
  std::vector<int64_t> lengths() const;
  // Sample i, truncated to its first max_len tokens when max_len >= 0 (a vision-language sample
  // to fewer when the cut would split an image: truncate_sample, vision_data.h). A sample with
  // images has its image_grid_thw, images and position_ids, and its pixel_values when `pixels`
  // (the image files are read, checked against their recorded hash and preprocessed now).
  Sample sample(int64_t i, int64_t max_len = -1, bool pixels = true) const;
  int64_t num_images(int64_t i) const;   // images of sample i
  int64_t num_patches(int64_t i) const;  // vision patches of sample i: sum of t*h*w of its grids
  int64_t line(int64_t i) const { return static_cast<int64_t>(lines_[i]); }  // 1-based
  std::string where(int64_t i) const;                                        // "path:line"

  const DataStats& stats() const { return stats_; }
  const std::string& path() const { return path_; }
  const std::string& cache_path() const { return cache_path_; }  // "" when not cached
  bool from_cache() const { return from_cache_; }                // loaded, not built
  // The cache key in hex: a hash of the data file's bytes, the tokenizer, every option that
  // changes the samples and the content of every image file. Equal keys mean equal samples.
  const std::string& content_key() const { return content_key_; }

 private:
  std::string path_, cache_path_, content_key_;
  bool from_cache_ = false;
  DataStats stats_;
  int64_t num_samples_ = 0, num_tokens_ = 0;
  const uint64_t* offsets_ = nullptr;
  const uint64_t* lines_ = nullptr;
  const uint32_t* tokens_ = nullptr;
  const uint64_t* label_bits_ = nullptr;        // bitmask labels, or
  const int32_t* labels_ = nullptr;             // explicit labels
  const uint64_t* image_offsets_ = nullptr;     // [S+1], or null without images
  const DatasetImageRecord* images_ = nullptr;  // [num_images_]
  const char* paths_ = nullptr;                 // the images' paths, as the data gives them
  int64_t num_images_ = 0;
  VisionDataOptions vision_;
  VisionTokenIds vision_ids_;
  std::shared_ptr<const void> storage_;  // owns the bytes the pointers above look into

  ImageRef image_ref(int64_t k) const;
  // False (and why) when an image file is missing or its content differs from the record.
  bool images_unchanged(std::string& why) const;
  void set_content_key(const Hash128& options_key);

  // Points the members into a cache image of `size` bytes at `data`; false (and why) when the
  // image is not a valid cache for `key`.
  bool attach(const void* data, size_t size, const uint64_t key[2], std::string& why);
  friend struct DatasetBuilder;
};

// Builds the pack of the given samples of `ds` (make_pack), each truncated to max_len tokens
// when max_len >= 0 (keeping the beginning); sample_index holds the dataset indices.
Pack make_dataset_pack(const Dataset& ds, const std::vector<int64_t>& batch, int64_t align = 1,
                       int64_t max_len = -1);

}  // namespace deltatron::data
