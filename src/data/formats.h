// JSONL sample formats (chat, prompt/completion, text, tokens) turned into HF-aligned Samples.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat_template.h"
#include "data/sample.h"
#include "data/vision_data.h"

namespace deltatron::data {

class Tokenizer;

// One sample per JSONL line. auto_detect decides per line by its keys, in this order:
//   "messages"                 chat: rendered with the chat format of ChatOptions (chat_template.h;
//                              "tools" and "chat_template_kwargs" of the row are used), loss
//                              per ChatOptions; images per vision_data.h (parts, "<image>"
//                              tags + "images", TRL's "images"), with VisionDataOptions
//   "input_ids" [+ "labels"]   tokens: pre-tokenised, as read_token_jsonl (sample.h)
//   "prompt" and "completion"  prompt_completion: the two strings concatenated with no template
//                              (encoded together, as HF would), loss on the completion, then EOS
//   "text"                     text: continued pre-training, loss on every token, then EOS
enum class Format { auto_detect, chat, tokens, prompt_completion, text };

// Why a line produced no sample. bad_line only occurs with skip_bad_lines (otherwise it throws).
enum class SkipReason {
  bad_line,   // malformed JSON, a conversation the chat template refuses, wrong types, ...
  empty,      // empty "messages" array, empty "text" / "prompt"+"completion"
  no_labels,  // nothing to train on (e.g. a chat without an assistant turn)
  count,
};
constexpr int kNumSkipReasons = static_cast<int>(SkipReason::count);
const char* skip_reason_name(SkipReason r);

struct FormatOptions {
  Format format = Format::auto_detect;
  ChatOptions chat;
  // When not empty, there is no chat format: a chat line is an error with this message (which
  // says how to choose a format).
  std::string no_chat_template;
  int32_t eos_id = -1;  // EOS appended to text and completions; -1: the tokenizer's <|endoftext|>
  bool append_eos = true;       // append (and train) EOS after "text" and after a completion
  bool skip_bad_lines = false;  // bad lines are counted and skipped instead of thrown
  VisionDataOptions vision;     // images in chat rows (off: a row with images is a bad line)
  // Fill Sample::pixel_values while reading (off: only grids and image refs; the pixels are
  // computed when a sample is taken, load_pixel_values; the Dataset does that).
  bool load_pixels = true;
};

// Summary of reading a data file.
struct DataStats {
  int64_t lines = 0;                               // lines read, blank ones included
  int64_t blank_lines = 0;                         // skipped silently
  int64_t samples = 0;                             // samples produced
  std::array<int64_t, kNumSkipReasons> skipped{};  // lines skipped, by SkipReason
  int64_t tokens = 0;                              // sum of sample lengths
  int64_t label_tokens = 0;    // sum of count_label_tokens (labels[0] never counts)
  std::string first_bad_line;  // "file:line: message" of the first bad_line skip, if any

  int64_t skipped_total() const;
  void add(const DataStats& o);  // merges counts (keeps the first first_bad_line)
  std::string summary() const;   // one line, e.g. "1000 lines, 990 samples, skipped 3 ...".
};

// What the converter needs from the tokenizer, resolved once.
struct FormatContext {
  const Tokenizer* tok = nullptr;
  bool has_chatml_tokens = false;  // <|im_start|> and <|im_end|> exist
  int32_t eos_id = -1;
  int64_t vocab_size = 0;
  VisionTokenIds vision_ids;
  static FormatContext make(const Tokenizer& tok, const FormatOptions& opt);
};

// Converts JSONL lines into samples. lines[i] is line number first_line + i of `path` (1-based,
// used in messages; image paths are relative to its directory). Image files are read, hashed and
// decoded in the parallel parse; a missing, unreadable, truncated or corrupt one makes the line
// bad ("path:line: image FILE: reason"). Texts are encoded with tok.encode_batch (one call for all
// lines, parallel), JSON is parsed in parallel with OpenMP. Appends the samples and their line
// numbers to `samples`/`sample_lines` in line order and accumulates into `stats`. Errors throw
// core::Error "path:line: ..." (the first bad line in file order) unless opt.skip_bad_lines.
void convert_lines(const std::vector<std::string_view>& lines, int64_t first_line,
                   const std::string& path, const Tokenizer& tok, const FormatOptions& opt,
                   const FormatContext& ctx, std::vector<Sample>& samples,
                   std::vector<int64_t>& sample_lines, DataStats& stats);

// Whole-file convenience (no cache, no progress): reads `path` and converts every line.
std::vector<Sample> read_jsonl(const std::string& path, const Tokenizer& tok,
                               const FormatOptions& opt, DataStats* stats = nullptr,
                               std::vector<int64_t>* sample_lines = nullptr);

// Tokenises a plan: parts' texts through encode_batch (all plans at once), labels = ids where the
// run/part is trained, -100 elsewhere. Exposed for tests.
std::vector<Sample> tokenize_plans(const std::vector<const TokenPlan*>& plans,
                                   const Tokenizer& tok);

}  // namespace deltatron::data
