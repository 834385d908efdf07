// Encoding pipeline of the tokenizer (added tokens, NFC, pre-tokenizer, BPE), decoding, batching.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <exception>

#include "core/error.h"
#include "data/tokenizer_model.h"
#include "data/tokenizer_text.h"

namespace deltatron::data {

namespace tok {

// ---- added-token matching ------------------------------------------------------------------

void AddedMatcher::build(std::vector<std::pair<std::string, int32_t>> patterns) {
  std::sort(patterns.begin(), patterns.end(), [](const auto& x, const auto& y) {
    const auto bx = static_cast<uint8_t>(x.first[0]), by = static_cast<uint8_t>(y.first[0]);
    return bx != by ? bx < by : x.first.size() > y.first.size();
  });
  patterns_ = std::move(patterns);
  first_.fill(0);
  for (const auto& p : patterns_) ++first_[static_cast<uint8_t>(p.first[0]) + 1];
  for (size_t b = 1; b < first_.size(); ++b) first_[b] += first_[b - 1];
}

bool AddedMatcher::find(std::string_view text, size_t from, size_t& begin, size_t& end,
                        int32_t& value) const {
  if (patterns_.empty()) return false;
  for (size_t pos = from; pos < text.size(); ++pos) {
    const auto b = static_cast<uint8_t>(text[pos]);
    for (uint32_t k = first_[b]; k < first_[b + 1]; ++k) {  // longest first
      const std::string& p = patterns_[k].first;
      if (p.size() <= text.size() - pos &&
          std::memcmp(text.data() + pos, p.data(), p.size()) == 0) {
        begin = pos, end = pos + p.size(), value = patterns_[k].second;
        return true;
      }
    }
  }
  return false;
}

namespace {

// Code point ending at byte `end` (text[..end] non-empty, valid UTF-8).
char32_t last_code_point(std::string_view text, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
  return next_code_point(text, i);
}

// HF AddedVocabulary::find_matches: splits `text` into added-token pieces and text pieces.
void split_on_added(const TokenizerModel& m, const AddedMatcher& matcher, std::string_view text,
                    std::vector<Workspace::Piece>& out) {
  out.clear();
  size_t start_offset = 0, search_from = 0, begin = 0, end = 0;
  int32_t index = 0;
  while (matcher.find(text, search_from, begin, end, index)) {
    search_from = end;  // the automaton resumes after the raw match, whatever strip did
    const AddedToken& t = m.added[static_cast<size_t>(index)];
    if (t.single_word) {
      const bool space_before = begin == 0 || !is_word_char(last_code_point(text, begin));
      size_t i = end;
      const bool space_after = end == text.size() || !is_word_char(next_code_point(text, i));
      if (!space_before || !space_after) continue;
    }
    if (t.lstrip) {
      size_t b = begin;  // start of the whitespace run that ends at `begin`
      while (b > 0) {
        size_t i = b - 1;
        while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
        size_t j = i;
        if (!is_white_space(next_code_point(text, j))) break;
        b = i;
      }
      begin = std::max(b, start_offset);
    }
    if (t.rstrip) {
      while (end < text.size()) {
        size_t j = end;
        if (!is_white_space(next_code_point(text, j))) break;
        end = j;
      }
    }
    if (start_offset < begin) out.push_back({start_offset, begin, -1});
    out.push_back({begin, end, t.id});
    start_offset = end;
  }
  if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
}

// Pre-tokenizes one normalised text segment and appends the BPE ids of its pieces.
void encode_segment(const TokenizerModel& m, std::string_view segment, Workspace& ws,
                    std::vector<int32_t>& ids) {
  if (segment.empty()) return;
  ws.cur.assign(1, segment);
  ws.owned.clear();
  for (const PreTokStep& step : m.pre_tok) {
    ws.next.clear();
    for (std::string_view piece : ws.cur) {
      if (step.kind == PreTokStep::Kind::byte_level && step.add_prefix_space &&
          piece.front() != ' ') {
        ws.owned.push_back(" ");
        ws.owned.back().append(piece);
        piece = ws.owned.back();
      }
      if (step.regex == nullptr) {
        ws.next.push_back(piece);
        continue;
      }
      ws.spans.clear();
      step.regex->find_matches(piece, ws.regex, ws.spans);
      for (const Span& s : ws.spans) {  // behavior Isolated: matches and gaps alike
        if (s.end > s.begin) ws.next.push_back(piece.substr(s.begin, s.end - s.begin));
      }
    }
    std::swap(ws.cur, ws.next);
  }
  for (std::string_view piece : ws.cur) m.bpe->encode_piece(piece, ws.bpe, ids);
}

// Normalises a raw text piece into ws.norm (NFC when configured).
std::string_view normalize(const TokenizerModel& m, std::string_view raw, Workspace& ws) {
  if (!m.nfc) return raw;
  nfc(raw, ws.norm);
  return ws.norm;
}

std::vector<int32_t> encode_text(const TokenizerModel& m, std::string_view text, bool with_added,
                                 Workspace& ws) {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (!is_valid_utf8(text)) {
    ws.clean.clear();
    append_utf8_lossy(text, ws.clean);
    text = ws.clean;
  }
  if (!with_added || m.added.empty()) {
    encode_segment(m, normalize(m, text, ws), ws, ids);
    return ids;
  }
  // HF extract_and_normalize: split on non-normalized tokens in the raw text, normalise the
  // text between them, split that on normalized tokens, pre-tokenize what remains.
  split_on_added(m, m.match_raw, text, ws.raw_pieces);
  for (const Workspace::Piece& raw : ws.raw_pieces) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string_view norm = normalize(m, text.substr(raw.begin, raw.end - raw.begin), ws);
    split_on_added(m, m.match_normalized, norm, ws.norm_pieces);
    for (const Workspace::Piece& p : ws.norm_pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else {
        encode_segment(m, norm.substr(p.begin, p.end - p.begin), ws, ids);
      }
    }
  }
  return ids;
}

// Each thread keeps one Workspace (regex state, BPE buffers and cache) across calls, so that
// repeated encode() calls and successive encode_batch() calls reuse the BPE cache. The cache
// belongs to one tokenizer: using another one on the same thread empties it first.
Workspace& thread_workspace(const TokenizerModel& m) {
  thread_local std::unique_ptr<Workspace> ws;
  thread_local uint64_t owner = 0;
  if (!ws) ws = std::make_unique<Workspace>();
  if (owner != m.serial) {
    ws->bpe.cache_clear();
    owner = m.serial;
  }
  return *ws;
}

}  // namespace
}  // namespace tok

// ---- public API ----------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const tok::TokenizerModel> model) : model_(std::move(model)) {}

Tokenizer Tokenizer::load(const std::string& tokenizer_json_path) {
  return Tokenizer(tok::load_tokenizer_model(tokenizer_json_path));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  return tok::encode_text(*model_, text, false, tok::thread_workspace(*model_));
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  return tok::encode_text(*model_, text, true, tok::thread_workspace(*model_));
}

std::vector<Tokenizer::AddedPiece> Tokenizer::split_added(std::string_view text,
                                                          bool special) const {
  const tok::TokenizerModel& m = *model_;
  tok::Workspace& ws = tok::thread_workspace(m);
  std::string clean;
  if (!tok::is_valid_utf8(text)) {
    tok::append_utf8_lossy(text, clean);
    text = clean;
  }
  std::vector<AddedPiece> out;
  auto add_text = [&](std::string_view t) {
    if (t.empty()) return;
    if (out.empty() || out.back().id >= 0) out.emplace_back();
    out.back().text.append(t);
  };
  // The same two stages as encode_text: raw tokens, NFC, normalized tokens.
  tok::split_on_added(m, special ? m.match_raw : m.match_raw_plain, text, ws.raw_pieces);
  for (const tok::Workspace::Piece& raw : ws.raw_pieces) {
    if (raw.id >= 0) {
      out.push_back({raw.id, {}});
      continue;
    }
    const std::string norm(tok::normalize(m, text.substr(raw.begin, raw.end - raw.begin), ws));
    tok::split_on_added(m, special ? m.match_normalized : m.match_normalized_plain, norm,
                        ws.norm_pieces);
    for (const tok::Workspace::Piece& p : ws.norm_pieces) {
      if (p.id >= 0)
        out.push_back({p.id, {}});
      else
        add_text(std::string_view(norm).substr(p.begin, p.end - p.begin));
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(
    const std::vector<std::string>& texts) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  std::exception_ptr error;
  const auto n = static_cast<int64_t>(texts.size());
#pragma omp parallel if (n > 1)
  {
    tok::Workspace& ws = tok::thread_workspace(*model_);
#pragma omp for schedule(dynamic, 8)
    for (int64_t i = 0; i < n; ++i) {
      try {
        out[static_cast<size_t>(i)] =
            tok::encode_text(*model_, texts[static_cast<size_t>(i)], false, ws);
      } catch (...) {
#pragma omp critical(deltatron_tokenizer_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = model_->added_ids.find(token); it != model_->added_ids.end()) {
    return it->second;
  }
  const tok::Vocab& vocab = model_->bpe->vocab();
  if (const auto it = vocab.find(token); it != vocab.end()) return it->second;
  return std::nullopt;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const tok::TokenizerModel& m = *model_;
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || id >= m.vocab_size) continue;
    const uint8_t flags = m.id_flags[static_cast<size_t>(id)];
    if (!(flags & tok::TokenizerModel::kHasToken)) continue;
    if (skip_special && (flags & tok::TokenizerModel::kSpecial)) continue;
    bytes.append(m.id_bytes[static_cast<size_t>(id)]);
  }
  std::string text;
  tok::append_utf8_lossy(bytes, text);
  return text;
}

int64_t Tokenizer::vocab_size() const { return model_->vocab_size; }

const std::string& Tokenizer::content_hash() const { return model_->content_hash; }

}  // namespace deltatron::data
