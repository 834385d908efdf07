// Python's text formatting of JSON values, as the Jinja chat templates print them (json.dumps, str,
// str.strip): needed to render a conversation byte for byte as Hugging Face does.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace deltatron::data {

// Chat data is parsed keeping the key order, as Python's json.loads does (tools and tool-call
// arguments are printed in their original key order).
using OrderedJson = nlohmann::ordered_json;

// json.dumps(v, ensure_ascii=False) with the default separators ", " and ": " (transformers'
// `tojson` filter): non-ASCII characters verbatim, control characters as \uXXXX (lowercase hex),
// floats as Python's repr. Integers outside int64/uint64 are not representable (nlohmann reads
// them as floats).
std::string py_json_dumps(const OrderedJson& v);

// Python str() of a scalar: strings as is, True/False, None, integers, floats as repr. Arrays and
// objects give json.dumps (callers only print scalars this way).
std::string py_str(const OrderedJson& v);

// Python repr(float): the shortest digits that round-trip, fixed notation when the decimal
// exponent is in [-4, 16), else d.ddde+XX; "1.0" for integral values, "-0.0", "inf", "nan".
std::string py_float_repr(double x);

// Python str.strip() with no argument (Jinja's `trim`): removes leading and trailing Unicode
// whitespace (str.isspace: \t\n\v\f\r, \x1c-\x1f, space, \x85, \xa0, U+1680, U+2000-U+200A,
// U+2028, U+2029, U+202F, U+205F, U+3000). Text is UTF-8.
std::string py_strip(std::string_view s);

// str.strip/lstrip/rstrip of one character.
std::string py_strip_char(std::string_view s, char c);
std::string py_lstrip_char(std::string_view s, char c);
std::string py_rstrip_char(std::string_view s, char c);

}  // namespace deltatron::data
