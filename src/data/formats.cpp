// Per-line JSONL parsing into token plans, batched tokenisation, and assembly into Samples.
#include "data/formats.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"

namespace deltatron::data {

const char* skip_reason_name(SkipReason r) {
  switch (r) {
    case SkipReason::bad_line:
      return "bad line";
    case SkipReason::empty:
      return "empty";
    case SkipReason::no_labels:
      return "no label tokens";
    case SkipReason::count:
      break;
  }
  return "?";
}

int64_t DataStats::skipped_total() const {
  int64_t n = 0;
  for (int64_t s : skipped) n += s;
  return n;
}

void DataStats::add(const DataStats& o) {
  lines += o.lines;
  blank_lines += o.blank_lines;
  samples += o.samples;
  for (int r = 0; r < kNumSkipReasons; ++r) skipped[r] += o.skipped[r];
  tokens += o.tokens;
  label_tokens += o.label_tokens;
  if (first_bad_line.empty()) first_bad_line = o.first_bad_line;
}

std::string DataStats::summary() const {
  std::ostringstream os;
  os << lines << " lines, " << samples << " samples, " << tokens << " tokens (" << label_tokens
     << " trained), skipped " << skipped_total();
  if (skipped_total() > 0) {
    os << " (";
    bool sep = false;
    for (int r = 0; r < kNumSkipReasons; ++r) {
      if (skipped[r] == 0) continue;
      os << (sep ? ", " : "") << skip_reason_name(static_cast<SkipReason>(r)) << ": " << skipped[r];
      sep = true;
    }
    os << ")";
  }
  if (!first_bad_line.empty()) os << "; first bad line: " << first_bad_line;
  return os.str();
}

FormatContext FormatContext::make(const Tokenizer& tok, const FormatOptions& opt) {
  FormatContext ctx;
  ctx.vocab_size = tok.vocab_size();
  ctx.tok = &tok;
  // Only required when a chat line shows up (checked there).
  ctx.has_chatml_tokens = tok.token_to_id("<|im_start|>") && tok.token_to_id("<|im_end|>");
  ctx.vision_ids = VisionTokenIds::from(tok);
  if (opt.eos_id >= 0) {
    DT_CHECK(opt.eos_id < ctx.vocab_size, "EOS id ", opt.eos_id, " is outside the vocabulary [0, ",
             ctx.vocab_size, ")");
    ctx.eos_id = opt.eos_id;
  } else if (auto eos = tok.token_to_id("<|endoftext|>")) {
    ctx.eos_id = *eos;
  }
  return ctx;
}

namespace {

// The result of parsing one line (no tokenisation yet).
struct Parsed {
  enum class Kind { blank, plan, sample, skip, error } kind = Kind::blank;
  TokenPlan plan;                            // Kind::plan
  Sample sample;                             // Kind::sample (pre-tokenised)
  std::vector<LoadedImage> images;           // Kind::plan of a chat row with images
  SkipReason reason = SkipReason::bad_line;  // Kind::skip
  std::string error;                         // Kind::error
};

Parsed make_error(std::string msg) {
  Parsed p;
  p.kind = Parsed::Kind::error;
  p.error = std::move(msg);
  return p;
}

Parsed make_skip(SkipReason r) {
  Parsed p;
  p.kind = Parsed::Kind::skip;
  p.reason = r;
  return p;
}

// Reads "input_ids"/"labels" as read_token_jsonl does; returns an error message or "".
std::string read_ids(const OrderedJson& j, const char* key, int64_t vocab, bool allow_ignore,
                     std::vector<int32_t>& out) {
  if (!j.is_array()) return std::string("\"") + key + "\" must be an array of integers";
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer())
      return std::string("\"") + key + "\"[" + std::to_string(i) + "] is not an integer";
    const int64_t x = v.get<int64_t>();
    if (!((x >= 0 && x < vocab) || (allow_ignore && x == kIgnoreIndex)))
      return std::string("\"") + key + "\"[" + std::to_string(i) + "] = " + std::to_string(x) +
             " is outside the vocabulary [0, " + std::to_string(vocab) + ")" +
             (allow_ignore ? " and is not -100" : "");
    out.push_back(static_cast<int32_t>(x));
  }
  return "";
}

const OrderedJson* find_string(const OrderedJson& j, const char* key, std::string& err) {
  auto it = j.find(key);
  if (it == j.end()) {
    err = std::string("missing \"") + key + "\"";
    return nullptr;
  }
  if (!it->is_string()) {
    err = std::string("\"") + key + "\" must be a string";
    return nullptr;
  }
  return &*it;
}

bool renders_images(ChatFormat f) {
  return f == ChatFormat::qwen3_5 || f == ChatFormat::qwen3_6 || f == ChatFormat::qwen3_8;
}

Parsed parse_line(std::string_view line, const std::string& path, const FormatOptions& opt,
                  const FormatContext& ctx) {
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) return Parsed{};
  OrderedJson j;
  try {
    j = OrderedJson::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return make_error(std::string("malformed JSON (") + e.what() + ")");
  }
  if (!j.is_object()) return make_error("expected a JSON object");

  Format f = opt.format;
  if (f == Format::auto_detect) {
    if (j.contains("messages"))
      f = Format::chat;
    else if (j.contains("input_ids"))
      f = Format::tokens;
    else if (j.contains("prompt") && j.contains("completion"))
      f = Format::prompt_completion;
    else if (j.contains("text"))
      f = Format::text;
    else
      return make_error(
          "unrecognised sample: expected \"messages\", \"input_ids\", \"prompt\"+\"completion\" "
          "or \"text\"");
  }

  Parsed p;
  p.kind = Parsed::Kind::plan;
  std::string err;
  switch (f) {
    case Format::auto_detect:
      break;
    case Format::chat: {
      auto it = j.find("messages");
      if (it == j.end()) return make_error("missing \"messages\"");
      if (!opt.no_chat_template.empty()) return make_error(opt.no_chat_template);
      if (!ctx.has_chatml_tokens)
        return make_error("chat sample, but the tokenizer has no <|im_start|>/<|im_end|>");
      const std::vector<std::string> sources = take_row_images(j);
      if (!sources.empty()) {
        if (!opt.vision.enabled)
          return make_error(std::to_string(sources.size()) +
                            " image(s), but the model has no vision tower (no \"vision_config\" "
                            "in its config.json): images need a vision-language checkpoint");
        if (!renders_images(opt.chat.format))
          return make_error(std::string("images need a Qwen3.5-family chat format (qwen3_5, "
                                        "qwen3_6, qwen3_8), not ") +
                            chat_format_name(opt.chat.format));
      }
      RenderedChat r = render_chat(j, opt.chat);
      if (!r.ok) return make_error(r.error);
      if (r.empty) return make_skip(SkipReason::empty);
      p.plan = chat_token_plan(r.segments, *ctx.tok, opt.chat.special_tokens_in_content);
      for (const std::string& src : sources)
        p.images.push_back(load_sample_image(path, src, opt.vision.processor, opt.load_pixels));
      break;
    }
    case Format::tokens: {
      auto it = j.find("input_ids");
      if (it == j.end()) return make_error("missing \"input_ids\"");
      p.kind = Parsed::Kind::sample;
      err = read_ids(*it, "input_ids", ctx.vocab_size, false, p.sample.input_ids);
      if (!err.empty()) return make_error(err);
      if (p.sample.input_ids.empty()) return make_skip(SkipReason::empty);
      auto lt = j.find("labels");
      if (lt != j.end() && !lt->is_null()) {
        err = read_ids(*lt, "labels", ctx.vocab_size, true, p.sample.labels);
        if (!err.empty()) return make_error(err);
        if (p.sample.labels.size() != p.sample.input_ids.size())
          return make_error("\"labels\" has " + std::to_string(p.sample.labels.size()) +
                            " entries but \"input_ids\" has " +
                            std::to_string(p.sample.input_ids.size()));
      } else {
        p.sample.labels = p.sample.input_ids;
      }
      break;
    }
    case Format::prompt_completion: {
      const OrderedJson* prompt = find_string(j, "prompt", err);
      if (!prompt) return make_error(err);
      const OrderedJson* completion = find_string(j, "completion", err);
      if (!completion) return make_error(err);
      const auto& ps = prompt->get_ref<const std::string&>();
      const auto& cs = completion->get_ref<const std::string&>();
      if (ps.empty() && cs.empty()) return make_skip(SkipReason::empty);
      p.plan.add_text(ps, false);
      p.plan.add_text(cs, true);
      if (opt.append_eos) {
        if (ctx.eos_id < 0) return make_error("no EOS id: the tokenizer has no <|endoftext|>");
        p.plan.add_id(ctx.eos_id, true);
      }
      break;
    }
    case Format::text: {
      const OrderedJson* text = find_string(j, "text", err);
      if (!text) return make_error(err);
      const auto& ts = text->get_ref<const std::string&>();
      if (ts.empty()) return make_skip(SkipReason::empty);
      p.plan.add_text(ts, true);
      if (opt.append_eos) {
        if (ctx.eos_id < 0) return make_error("no EOS id: the tokenizer has no <|endoftext|>");
        p.plan.add_id(ctx.eos_id, true);
      }
      break;
    }
  }
  return p;
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = std::min(a.size(), b.size()), k = 0;
  while (k < n && a[k] == b[k]) ++k;
  return k;
}

}  // namespace

std::vector<Sample> tokenize_plans(const std::vector<const TokenPlan*>& plans,
                                   const Tokenizer& tok) {
  // Texts to encode: per text part its whole piece, then the prefix before every run after the
  // first (runs alternate in `train`, TokenPlan::add_text merges equal neighbours).
  std::vector<std::string> texts;
  for (const TokenPlan* plan : plans)
    for (const TokenPlan::Part& part : plan->parts) {
      if (part.id >= 0) continue;
      std::string full;
      std::vector<std::string> prefixes;
      for (size_t k = 0; k < part.runs.size(); ++k) {
        if (k > 0) prefixes.push_back(full);
        full += part.runs[k].text;
      }
      texts.push_back(std::move(full));
      for (auto& pre : prefixes) texts.push_back(std::move(pre));
    }
  const std::vector<std::vector<int32_t>> enc = tok.encode_batch(texts);
  DT_CHECK(enc.size() == texts.size(), "encode_batch returned ", enc.size(), " results for ",
           texts.size(), " texts");

  std::vector<Sample> out(plans.size());
  size_t e = 0;
  for (size_t s = 0; s < plans.size(); ++s) {
    Sample& smp = out[s];
    for (const TokenPlan::Part& part : plans[s]->parts) {
      if (part.id >= 0) {
        smp.input_ids.push_back(part.id);
        smp.labels.push_back(part.train ? part.id : kIgnoreIndex);
        continue;
      }
      const std::vector<int32_t>& ids = enc[e++];
      // Token boundary of run k: the common prefix with the encoded text before run k. When the
      // text before run k does not encode to a prefix of the whole, its last token merged with
      // run k's first characters: that straddling token is trained if either run is (HF marks
      // every token that overlaps a trained character span).
      const size_t nruns = part.runs.size();
      std::vector<size_t> start(nruns + 1, 0);
      std::vector<bool> straddle(nruns, false);
      start[nruns] = ids.size();
      for (size_t k = 1; k < nruns; ++k) {
        const std::vector<int32_t>& before = enc[e++];
        const size_t c = common_prefix(ids, before);
        start[k] = std::max(start[k - 1], c);
        straddle[k] = c < before.size();
      }
      for (size_t k = 0; k < nruns; ++k)
        for (size_t t = start[k]; t < start[k + 1]; ++t) {  // start is nondecreasing
          const bool train =
              part.runs[k].train || (t == start[k] && straddle[k] && part.runs[k - 1].train);
          smp.input_ids.push_back(ids[t]);
          smp.labels.push_back(train ? ids[t] : kIgnoreIndex);
        }
    }
  }
  return out;
}

void convert_lines(const std::vector<std::string_view>& lines, int64_t first_line,
                   const std::string& path, const Tokenizer& tok, const FormatOptions& opt,
                   const FormatContext& ctx, std::vector<Sample>& samples,
                   std::vector<int64_t>& sample_lines, DataStats& stats) {
  const int64_t n = static_cast<int64_t>(lines.size());
  std::vector<Parsed> parsed(n);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    try {
      parsed[i] = parse_line(lines[i], path, opt, ctx);
    } catch (const std::exception& e) {  // e.g. bad_alloc; never let it escape the region
      parsed[i] = make_error(e.what());
    }
  }

  auto where = [&](int64_t i) { return path + ":" + std::to_string(first_line + i); };
  std::vector<const TokenPlan*> plans;
  stats.lines += n;
  for (int64_t i = 0; i < n; ++i) {
    Parsed& p = parsed[i];
    if (p.kind == Parsed::Kind::blank) ++stats.blank_lines;
    if (p.kind == Parsed::Kind::error) {
      DT_CHECK(opt.skip_bad_lines, where(i), ": ", p.error);
      if (stats.first_bad_line.empty()) stats.first_bad_line = where(i) + ": " + p.error;
      p.kind = Parsed::Kind::skip;
      p.reason = SkipReason::bad_line;
    }
    if (p.kind == Parsed::Kind::plan) plans.push_back(&p.plan);
  }
  std::vector<Sample> encoded = tokenize_plans(plans, tok);

  size_t next_plan = 0;
  for (int64_t i = 0; i < n; ++i) {
    Parsed& p = parsed[i];
    Sample s;
    if (p.kind == Parsed::Kind::plan) {
      s = std::move(encoded[next_plan++]);
      if (!p.images.empty()) {
        try {
          expand_image_tokens(s, std::move(p.images), ctx.vision_ids,
                              opt.vision.processor.merge_size);
        } catch (const core::Error& e) {
          DT_CHECK(opt.skip_bad_lines, where(i), ": ", e.what());
          if (stats.first_bad_line.empty()) stats.first_bad_line = where(i) + ": " + e.what();
          ++stats.skipped[static_cast<int>(SkipReason::bad_line)];
          continue;
        }
      }
    } else if (p.kind == Parsed::Kind::sample)
      s = std::move(p.sample);
    else {
      if (p.kind == Parsed::Kind::skip) ++stats.skipped[static_cast<int>(p.reason)];
      continue;
    }
    const int64_t trained = count_label_tokens(s);
    if (trained == 0) {
      ++stats.skipped[static_cast<int>(SkipReason::no_labels)];
      continue;
    }
    ++stats.samples;
    stats.tokens += static_cast<int64_t>(s.input_ids.size());
    stats.label_tokens += trained;
    samples.push_back(std::move(s));
    sample_lines.push_back(first_line + i);
  }
}

std::vector<Sample> read_jsonl(const std::string& path, const Tokenizer& tok,
                               const FormatOptions& opt, DataStats* stats,
                               std::vector<int64_t>* sample_lines) {
  std::ifstream in(path, std::ios::binary);
  DT_CHECK(in.good(), path, ": cannot open data file");
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string data = buf.str();
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t end = data.find('\n', pos);
    if (end == std::string::npos) end = data.size();
    lines.emplace_back(data.data() + pos, end - pos);
    pos = end + 1;
  }
  const FormatContext ctx = FormatContext::make(tok, opt);
  std::vector<Sample> samples;
  std::vector<int64_t> where;
  DataStats st;
  convert_lines(lines, 1, path, tok, opt, ctx, samples, where, st);
  if (stats) *stats = st;
  if (sample_lines) *sample_lines = std::move(where);
  return samples;
}

}  // namespace deltatron::data
