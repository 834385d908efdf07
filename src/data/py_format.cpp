// Python-compatible printing of JSON values and Python's whitespace strip (see py_format.h).
#include "data/py_format.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace deltatron::data {

namespace {

void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

void dump(const OrderedJson& v, std::string& out) {
  switch (v.type()) {
    case OrderedJson::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        dump_string(it.key(), out);
        out += ": ";
        dump(it.value(), out);
      }
      out += '}';
      break;
    }
    case OrderedJson::value_t::array: {
      out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        dump(v[i], out);
      }
      out += ']';
      break;
    }
    case OrderedJson::value_t::string:
      dump_string(v.get_ref<const std::string&>(), out);
      break;
    case OrderedJson::value_t::number_float:
      out += py_float_repr(v.get<double>());
      break;
    case OrderedJson::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case OrderedJson::value_t::null:
    case OrderedJson::value_t::discarded:
      out += "null";
      break;
    default:  // integers
      out += v.dump();
  }
}

// Decodes the UTF-8 code point at s[i] (advancing i); ill-formed bytes decode as themselves.
char32_t decode_at(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

}  // namespace

std::string py_json_dumps(const OrderedJson& v) {
  std::string out;
  dump(v, out);
  return out;
}

std::string py_str(const OrderedJson& v) {
  switch (v.type()) {
    case OrderedJson::value_t::string:
      return v.get<std::string>();
    case OrderedJson::value_t::boolean:
      return v.get<bool>() ? "True" : "False";
    case OrderedJson::value_t::null:
      return "None";
    case OrderedJson::value_t::number_float:
      return py_float_repr(v.get<double>());
    case OrderedJson::value_t::number_integer:
    case OrderedJson::value_t::number_unsigned:
      return v.dump();
    default:
      return py_json_dumps(v);
  }
}

std::string py_float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x < 0 ? "-inf" : "inf";
  // Shortest round-trip digits and exponent, from scientific to_chars ("d.ddde+XX").
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(r.ptr - buf));
  std::string sign;
  if (!sci.empty() && sci[0] == '-') {
    sign = "-";
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e))
    if (c != '.') digits += c;
  const int exp10 = std::atoi(std::string(sci.substr(e + 1)).c_str());
  const int decpt = exp10 + 1;  // digits d1 d2 ... = 0.d1d2... * 10^decpt
  std::string out = sign;
  if (-4 < decpt && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
    } else if (static_cast<size_t>(decpt) >= digits.size()) {
      out += digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
  return out + ebuf;
}

std::string py_strip(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    size_t i = b;
    if (!py_isspace(decode_at(s, i))) break;
    b = i;
  }
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t i = start;
    if (!py_isspace(decode_at(s, i)) || i != e) break;
    e = start;
  }
  return std::string(s.substr(b, e - b));
}

std::string py_lstrip_char(std::string_view s, char c) {
  const size_t b = s.find_first_not_of(c);
  return b == std::string_view::npos ? std::string() : std::string(s.substr(b));
}

std::string py_rstrip_char(std::string_view s, char c) {
  const size_t e = s.find_last_not_of(c);
  return e == std::string_view::npos ? std::string() : std::string(s.substr(0, e + 1));
}

std::string py_strip_char(std::string_view s, char c) {
  return py_lstrip_char(py_rstrip_char(s, c), c);
}

}  // namespace deltatron::data
