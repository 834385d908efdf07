// The step's routing counts on the device (see router_loss.h).
#include "model/router_loss.h"

#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::model {

GlobalRouterCounts::Layer& GlobalRouterCounts::at(const std::string& moe_prefix, core::Device dev,
                                                  int64_t E) {
  auto it = layers.find(moe_prefix);
  if (it != layers.end()) {
    DT_CHECK(it->second.counts_E.numel() == E && it->second.counts_E.device() == dev,
             "routing counts of ", moe_prefix, " were made for another model or device");
    return it->second;
  }
  Layer l{core::Buffer(dev, core::DType::f64, {E}, "routing counts"),
          core::Buffer(dev, core::DType::f64, {1}, "routed token count")};
  ops::zero(l.counts_E);
  ops::zero(l.tokens_1);
  return layers.emplace(moe_prefix, std::move(l)).first->second;
}

const GlobalRouterCounts::Layer& GlobalRouterCounts::get(const std::string& moe_prefix) const {
  auto it = layers.find(moe_prefix);
  DT_CHECK(it != layers.end(), "no global routing counts for ", moe_prefix);
  return it->second;
}

void GlobalRouterCounts::add_in_rank_order(const std::string& moe_prefix, const core::View& own_E,
                                           const core::View& own_1, const core::View& seen_E,
                                           const core::View& seen_1) {
  DT_CHECK(ranks != nullptr, "add_in_rank_order without ranks");
  const int64_t E = own_E.numel(), n = ranks->size(), r = ranks->rank();
  Layer& l = at(moe_prefix, own_E.device, E);
  // [E counts, token total] per rank, gathered (f64 sums of integers: exact).
  std::vector<double> mine(size_t(E + 1));
  ops::copy_to_host(own_E, mine.data());
  ops::copy_to_host(own_1, mine.data() + E);
  core::Buffer send(own_E.device, core::DType::f64, {E + 1}, "routing counts to gather");
  core::Buffer all(own_E.device, core::DType::f64, {n * (E + 1)}, "gathered routing counts");
  ops::copy_from_host(send, mine.data());
  ranks->all_gather(send, all);
  std::vector<double> got(size_t(n * (E + 1))), held(size_t(E + 1));
  ops::copy_to_host(all, got.data());
  ops::copy_to_host(l.counts_E, held.data());
  ops::copy_to_host(l.tokens_1, held.data() + E);
  std::vector<double> seen = held;
  for (int64_t q = 0; q < n; ++q)
    for (int64_t e = 0; e <= E; ++e) {
      const double v = got[size_t(q * (E + 1) + e)];
      if (q <= r) seen[size_t(e)] += v;
      held[size_t(e)] += v;
    }
  ops::copy_from_host(seen_E, seen.data());
  ops::copy_from_host(seen_1, seen.data() + E);
  ops::copy_from_host(l.counts_E, held.data());
  ops::copy_from_host(l.tokens_1, held.data() + E);
}

std::vector<double> GlobalRouterCounts::counts(const std::string& moe_prefix) const {
  const Layer& l = get(moe_prefix);
  std::vector<double> out(l.counts_E.numel());
  ops::copy_to_host(l.counts_E, out.data());
  return out;
}

double GlobalRouterCounts::tokens(const std::string& moe_prefix) const {
  double t = 0;
  ops::copy_to_host(get(moe_prefix).tokens_1, &t);
  return t;
}

std::map<std::string, std::vector<double>> GlobalRouterCounts::host_counts() const {
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, l] : layers) out[name] = counts(name);
  return out;
}

std::map<std::string, double> GlobalRouterCounts::host_tokens() const {
  std::map<std::string, double> out;
  for (const auto& [name, l] : layers) out[name] = tokens(name);
  return out;
}

}  // namespace deltatron::model
