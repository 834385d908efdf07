// The job's rendezvous: a small TCP key-value store that rank 0 hosts at master_addr:master_port,
// through which the ranks swap what they need to connect (Gloo's pair addresses, NCCL's id).
//
// Every rank, rank 0 included, is a client of the store over one TCP connection. Rank 0 first
// starts the server (a thread listening on every interface at master_port; the store lives as
// long as rank 0's Rendezvous). Keys are strings, values bytes; a key is written once by one rank
// and read by the others (set overwrites). Wire format, both ways little-endian:
//   request  'S' u32 key_len key u32 value_len value   reply 'K'
//            'G' u32 key_len key                       reply 'V' u32 value_len value, or 'N'
// get() waits for a missing key by asking again (1 ms, doubling up to 20 ms between asks), so
// the server never holds a pending request. Not a general-purpose database: no deletes, values
// up to 64 MiB, one request at a time per connection.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace deltatron::dist {

class Rendezvous {
 public:
  // Connects rank `rank` to the store at addr:port (rank 0 starts the server first). Connecting
  // is retried until `timeout_s` has passed (rank 0 may start after the others); then, or when
  // rank 0 cannot listen on the port, a core::Error names the address, the port and the rank.
  // timeout_s also bounds every get() and every reply.
  Rendezvous(const std::string& addr, int port, int rank, double timeout_s);
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  void set(const std::string& key, const std::vector<char>& value);
  // The value of `key`, waiting up to timeout_s() for another rank to set it; core::Error naming
  // the key, this rank and the store's address after that.
  std::vector<char> get(const std::string& key);
  // The value of `key` if set now (no wait).
  bool try_get(const std::string& key, std::vector<char>& value);

  int rank() const { return rank_; }
  double timeout_s() const { return timeout_s_; }
  // "addr:port" of the store, for messages.
  std::string where() const;
  // This host's address on the connection to the store: an interface that reaches rank 0's host
  // (what Gloo's TCP transport binds to), e.g. "127.0.0.1" for a single-host job.
  const std::string& local_address() const { return local_address_; }

 private:
  class Server;
  // One request; returns the reply's first byte and fills `value` with a 'V' reply's bytes.
  char request(char op, const std::string& key, const std::vector<char>* value,
               std::vector<char>* reply_value);

  std::string addr_;
  int port_;
  int rank_;
  double timeout_s_;
  std::unique_ptr<Server> server_;  // rank 0 only
  int fd_ = -1;
  std::string local_address_;
  std::mutex mu_;
};

}  // namespace deltatron::dist
