// Text helpers of the tokenizer: UTF-8 repair, NFC, the GPT-2 byte<->char map, char classes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace deltatron::data::tok {

// True when `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// Appends `s` to `out` with every ill-formed sequence replaced by U+FFFD, one per "maximal
// subpart" (Unicode 15 section 3.9, the policy of Rust's String::from_utf8_lossy and of
// Python's bytes.decode(errors="replace")).
void append_utf8_lossy(std::string_view s, std::string& out);

// Decodes the code point starting at s[i] of valid UTF-8 and advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);

// Appends the UTF-8 encoding of `cp` to `out`.
void append_utf8(char32_t cp, std::string& out);

// Writes NFC(s) into `out` (replacing its contents), as HF's NFC normalizer computes it (with
// Unicode 9.0 tables: see nfc_inert_in_hf). `s` must be valid UTF-8. Text whose code points are
// all below U+0300 is already in NFC and is copied as is; the rest goes through utf8proc
// (UTF8PROC_STABLE | UTF8PROC_COMPOSE).
void nfc(std::string_view s, std::string& out);

// The GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100.. in increasing order (e.g. ' ' -> U+0120 'Ġ', '\n' -> U+010A 'Ċ').
struct ByteLevelAlphabet {
  std::array<char32_t, 256> char_of_byte;     // byte -> code point
  std::array<std::string, 256> utf8_of_byte;  // byte -> UTF-8 of that code point
  // Inverse map: code point (< 512) -> byte, or -1 for code points outside the alphabet.
  std::array<int16_t, 512> byte_of_char;
};
const ByteLevelAlphabet& byte_level_alphabet();

// Maps each byte of `s` to its byte-level char (UTF-8) and appends the result to `out`.
void append_byte_level(std::string_view s, std::string& out);

// Undoes append_byte_level for a token string: true and appends the bytes when every char of
// `token` is in the alphabet; false (and `out` untouched) otherwise.
bool append_bytes_of_byte_level(std::string_view token, std::string& out);

// Unicode White_Space (Rust regex `\s`): U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
bool is_white_space(char32_t cp);

// Rust regex `\w`: Alphabetic | M | Nd | Pc | Join_Control. Alphabetic is taken as L | Nl plus
// the So letters of Other_Alphabetic (circled and squared Latin letters); the marks of
// Other_Alphabetic are already in M.
bool is_word_char(char32_t cp);

}  // namespace deltatron::data::tok
