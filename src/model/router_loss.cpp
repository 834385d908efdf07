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
