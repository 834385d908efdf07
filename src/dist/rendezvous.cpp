// The rendezvous store: rank 0's server thread (one poll loop over the listening socket and the
// clients' connections) and every rank's client connection (rendezvous.h).
#include "dist/rendezvous.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "core/error.h"

namespace deltatron::dist {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMaxKeyBytes = 4096;
constexpr uint32_t kMaxValueBytes = 64u << 20;

std::string errno_str(int err) { return std::strerror(err); }

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// Writes all n bytes (blocking socket); false on a closed or failed connection.
bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

Clock::time_point deadline_in(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::min(seconds, 1e9)));
}

double seconds_left(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}

// Reads exactly n bytes before `deadline`: 1 done, 0 timed out, -1 connection closed or failed.
int recv_all(int fd, char* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    const double left = seconds_left(deadline);
    if (left <= 0) return 0;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, int(std::min(left * 1000.0, 1e9)) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) continue;  // the deadline check above ends the loop
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) return -1;
    p += k;
    n -= size_t(k);
  }
  return 1;
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

// ---- server (rank 0) --------------------------------------------------------------------------

class Rendezvous::Server {
 public:
  explicit Server(int port) {
    listen_fd_ = open_listener(port);
    if (::pipe(wake_) != 0) {
      const int err = errno;
      ::close(listen_fd_);
      core::fail("rendezvous: rank 0 cannot create a pipe: ", errno_str(err));
    }
    thread_ = std::thread([this] { run(); });
  }
  ~Server() {
    const char b = 0;
    [[maybe_unused]] ssize_t w = ::write(wake_[1], &b, 1);
    thread_.join();
    for (const Conn& c : conns_) ::close(c.fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

 private:
  struct Conn {
    int fd;
    std::string in;  // bytes received and not yet handled
  };

  // A socket listening on every interface at `port`: IPv6 accepting IPv4 too where the host has
  // IPv6, else IPv4.
  static int open_listener(int port) {
    int last_err = 0;
    for (const int family : {AF_INET6, AF_INET}) {
      const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        last_err = errno;
        continue;
      }
      const int one = 1, zero = 0;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      int rc;
      if (family == AF_INET6) {
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_any;
        a.sin6_port = htons(uint16_t(port));
        rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        a.sin_port = htons(uint16_t(port));
        rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      }
      if (rc == 0 && ::listen(fd, 1024) == 0) return fd;
      last_err = errno;
      ::close(fd);
      if (last_err == EADDRINUSE) break;  // IPv4 would find the same port taken
    }
    core::fail("rendezvous: rank 0 cannot listen on port ", port, ": ", errno_str(last_err),
               last_err == EADDRINUSE ? " (another job on this MASTER_PORT? choose another)" : "");
  }

  void run() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.assign({{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}});
      for (const Conn& c : conns_) fds.push_back({c.fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[0].revents) return;
      if (fds[1].revents & POLLIN) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          set_nodelay(fd);
          conns_.push_back({fd, {}});
        }
      }
      // Handle the clients polled in this round (conns_ may have grown by the accept above).
      std::vector<int> dead;
      for (size_t i = 2; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        Conn& c = conns_[i - 2];
        char buf[65536];
        const ssize_t k = ::recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0 || (c.in.append(buf, size_t(k)), !serve(c))) dead.push_back(c.fd);
      }
      for (const int fd : dead) {
        ::close(fd);
        conns_.erase(
            std::find_if(conns_.begin(), conns_.end(), [fd](const Conn& c) { return c.fd == fd; }));
      }
    }
  }

  // Answers every complete request in c.in; false when the client must be dropped (a malformed
  // request or a failed reply).
  bool serve(Conn& c) {
    size_t pos = 0;
    for (;;) {
      const std::string& in = c.in;
      if (in.size() - pos < 5) break;
      const char op = in[pos];
      const uint32_t klen = get_u32(&in[pos + 1]);
      if ((op != 'S' && op != 'G') || klen > kMaxKeyBytes) return false;
      size_t need = 5 + size_t(klen);
      uint32_t vlen = 0;
      if (op == 'S') {
        if (in.size() - pos < need + 4) break;
        vlen = get_u32(&in[pos + need]);
        if (vlen > kMaxValueBytes) return false;
        need += 4 + size_t(vlen);
      }
      if (in.size() - pos < need) break;
      std::string key = in.substr(pos + 5, klen);
      std::string reply;
      if (op == 'S') {
        const char* v = &in[pos + 5 + klen + 4];
        kv_[std::move(key)].assign(v, v + vlen);
        reply = "K";
      } else if (auto it = kv_.find(key); it != kv_.end()) {
        reply = "V";
        put_u32(reply, uint32_t(it->second.size()));
        reply.append(it->second.data(), it->second.size());
      } else {
        reply = "N";
      }
      if (!send_all(c.fd, reply.data(), reply.size())) return false;
      pos += need;
    }
    c.in.erase(0, pos);
    return true;
  }

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::vector<Conn> conns_;
  std::map<std::string, std::vector<char>> kv_;
  std::thread thread_;
};

// ---- client (every rank) ------------------------------------------------------------------------

namespace {

// A connected socket to addr:port, tried until `deadline` (the server may not be up yet). Fills
// `why` with the last failure when it returns -1.
int connect_once(const std::string& addr, int port, Clock::time_point deadline, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int gai = ::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (gai != 0) {
    why = std::string("cannot resolve the address: ") + ::gai_strerror(gai);
    return -1;
  }
  int result = -1;
  for (addrinfo* ai = res; ai && result < 0; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      why = errno_str(errno);
      continue;
    }
    // Non-blocking connect, so an unreachable host costs the time left, not the kernel's minutes.
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = rc == 0 ? 0 : errno;
    if (rc != 0 && err == EINPROGRESS) {
      pollfd pfd{fd, POLLOUT, 0};
      const double left = std::max(seconds_left(deadline), 0.0);
      if (::poll(&pfd, 1, int(std::min(left * 1000.0, 1e9)) + 1) == 1) {
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      } else {
        err = ETIMEDOUT;
      }
    }
    if (err == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      set_nodelay(fd);
      result = fd;
    } else {
      why = errno_str(err);
      ::close(fd);
    }
  }
  ::freeaddrinfo(res);
  return result;
}

}  // namespace

Rendezvous::Rendezvous(const std::string& addr, int port, int rank, double timeout_s)
    : addr_(addr), port_(port), rank_(rank), timeout_s_(timeout_s) {
  DT_CHECK(port > 0 && port < 65536, "rendezvous: port ", port, " is not in 1..65535");
  DT_CHECK(timeout_s > 0, "rendezvous: timeout ", timeout_s, " s is not positive");
  if (rank == 0) server_ = std::make_unique<Server>(port);
  const auto deadline = deadline_in(timeout_s);
  std::string why = "no attempt";
  for (int attempt = 0;; ++attempt) {
    fd_ = connect_once(addr, port, deadline, why);
    if (fd_ >= 0 || seconds_left(deadline) <= 0) break;
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::min(10 << std::min(attempt, 4), 100)));
  }
  if (fd_ < 0) {
    server_.reset();
    core::fail("rendezvous: rank ", rank, " cannot reach the store at ", where(), " within ",
               timeout_s, " s (", why, "; rank 0 hosts it: is MASTER_ADDR/MASTER_PORT right and ",
               "rank 0 running?)");
  }
  sockaddr_storage local{};
  socklen_t len = sizeof(local);
  char host[NI_MAXHOST] = "127.0.0.1";
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&local), &len) == 0)
    ::getnameinfo(reinterpret_cast<sockaddr*>(&local), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST);
  local_address_ = host;
  // An IPv4 peer reached over a dual-stack socket shows as ::ffff:a.b.c.d.
  if (local_address_.rfind("::ffff:", 0) == 0 && local_address_.find('.') != std::string::npos)
    local_address_ = local_address_.substr(7);
}

Rendezvous::~Rendezvous() {
  if (fd_ >= 0) ::close(fd_);
  server_.reset();
}

std::string Rendezvous::where() const {
  return (addr_.find(':') != std::string::npos ? "[" + addr_ + "]" : addr_) + ":" +
         std::to_string(port_);
}

char Rendezvous::request(char op, const std::string& key, const std::vector<char>* value,
                         std::vector<char>* reply_value) {
  DT_CHECK(key.size() <= kMaxKeyBytes, "rendezvous: key of ", key.size(), " bytes");
  DT_CHECK(!value || value->size() <= kMaxValueBytes, "rendezvous: value of ", value->size(),
           " bytes for key '", key, "'");
  std::lock_guard<std::mutex> lock(mu_);
  DT_CHECK(fd_ >= 0, "rendezvous: rank ", rank_, " lost its connection to the store at ", where());
  std::string msg(1, op);
  put_u32(msg, uint32_t(key.size()));
  msg += key;
  if (value) {
    put_u32(msg, uint32_t(value->size()));
    msg.append(value->data(), value->size());
  }
  const auto deadline = deadline_in(timeout_s_);
  auto lost = [&](const char* what) {
    ::close(fd_);
    fd_ = -1;
    core::fail("rendezvous: rank ", rank_, " ", what, " the store at ", where(), " (key '", key,
               "'; did rank 0 exit?)");
  };
  if (!send_all(fd_, msg.data(), msg.size())) lost("lost its connection to");
  char head = 0;
  int r = recv_all(fd_, &head, 1, deadline);
  if (r == 0) lost("had no reply within the timeout from");
  if (r < 0) lost("lost its connection to");
  if (head == 'V') {
    char len[4];
    if (recv_all(fd_, len, 4, deadline) <= 0) lost("lost its connection to");
    reply_value->resize(get_u32(len));
    if (recv_all(fd_, reply_value->data(), reply_value->size(), deadline) <= 0)
      lost("lost its connection to");
  }
  return head;
}

void Rendezvous::set(const std::string& key, const std::vector<char>& value) {
  const char r = request('S', key, &value, nullptr);
  DT_CHECK(r == 'K', "rendezvous: rank ", rank_, ": bad reply from the store at ", where());
}

bool Rendezvous::try_get(const std::string& key, std::vector<char>& value) {
  const char r = request('G', key, nullptr, &value);
  DT_CHECK(r == 'V' || r == 'N', "rendezvous: rank ", rank_, ": bad reply from the store at ",
           where());
  return r == 'V';
}

std::vector<char> Rendezvous::get(const std::string& key) {
  const auto deadline = deadline_in(timeout_s_);
  std::vector<char> value;
  for (int wait_ms = 1;; wait_ms = std::min(2 * wait_ms, 20)) {
    if (try_get(key, value)) return value;
    if (seconds_left(deadline) <= 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }
  core::fail("rendezvous: rank ", rank_, " waited ", timeout_s_, " s for key '", key,
             "' at the store at ", where(),
             " (a rank did not arrive: did every rank start, with the same WORLD_SIZE?)");
}

}  // namespace deltatron::dist
