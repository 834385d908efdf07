// What the communicator backends share (internal to src/dist): the argument checks of the
// collectives (comm.h's contract, one message format for every backend), the effective timeout,
// and the constructors connect() chooses from.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dist/comm.h"

namespace deltatron::dist {

class Rendezvous;

namespace detail {

// Each throws core::Error "<backend> <collective>: ..." naming the offending view or argument.
// A view must be on `dev`, of a supported dtype (f32, f64, bf16, i32, i64), non-null unless empty.
void check_view(const Comm& c, const char* op, const char* name, const core::View& v);
void check_all_reduce(const Comm& c, const core::View& x);
void check_reduce_scatter(const Comm& c, const core::View& in, const core::View& out);
// Returns true when `in` is out's block rank() (the in-place form).
bool check_all_gather(const Comm& c, const core::View& in, const core::View& out);
// The blocks start at element 0 of in and out; elements past the last block are untouched.
void check_all_to_all_v(const Comm& c, const core::View& in,
                        const std::vector<int64_t>& send_counts, const core::View& out,
                        const std::vector<int64_t>& recv_counts);
void check_broadcast(const Comm& c, const core::View& x, int root);

// Element offsets of consecutive blocks of `counts` elements: [0, c0, c0 + c1, ...].
std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts);

// opt.timeout_s, or DT_DIST_TIMEOUT (seconds) when set; core::Error naming DT_DIST_TIMEOUT for a
// value that is not a positive number.
double timeout_seconds(const CommOptions& opt);

// "<backend> <op> (rank R of S)", the head of every error message of a collective.
std::string where(const Comm& c, const char* op);

// A communicator over Gloo's TCP transport for `world` (world.size > 1), reached through `store`.
std::unique_ptr<Comm> make_gloo_comm(std::shared_ptr<Rendezvous> store, const World& world,
                                     double timeout_s);
// Gloo for CUDA views: every collective copies its device views to host memory, runs `host`
// (a Gloo communicator) and copies the results back (a CPU-only build throws core::Error).
std::unique_ptr<Comm> make_staged_comm(std::unique_ptr<Comm> host);
// A communicator over NCCL on the current CUDA device; a CPU-only build throws core::Error.
std::unique_ptr<Comm> make_nccl_comm(std::shared_ptr<Rendezvous> store, const World& world,
                                     double timeout_s);

}  // namespace detail
}  // namespace deltatron::dist
