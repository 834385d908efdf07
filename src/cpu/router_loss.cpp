// CPU reference for the router-loss coefficients (see router_loss.h).
#include "cpu/router_loss.h"

namespace deltatron::cpu {

void moe_aux_coefs(const double* tokens_G, int64_t G, double numer, double k, double step_tokens,
                   double* c_G) {
  for (int64_t g = 0; g < G; ++g) {
    const double T = tokens_G[g];
    if (T <= 0) {  // a padding-only or empty group contributes nothing
      c_G[g] = 0.0;
      continue;
    }
    const double T2 = step_tokens > 0 ? T * step_tokens : T * T;
    c_G[g] = numer / (k * T2);
  }
}

}  // namespace deltatron::cpu
