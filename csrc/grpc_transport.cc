// Native gRPC transport: a C++ completion-queue server that hands batches of calls to Python.
//
// The server is gRPC's generic (raw-bytes) service, so no protobuf is linked in: Python
// parses and serializes the messages. One C++ thread drives the completion queue and never
// touches Python. Calls whose request has arrived wait in a list; an eventfd becomes readable
// when that list turns non-empty, and Python's event loop takes every pending call at once
// (take). Python's answers (respond) are queued and an alarm wakes the completion-queue thread,
// which sends them: Python never waits on gRPC's sends.
//
// The listening sockets are this module's own, accepted on a thread of their own and handed to
// gRPC through its external-connection acceptor: libgrpc 1.51's listener stops accepting for
// good once accept4 fails with EMFILE (later gRPC versions retry), so this loop waits for
// descriptors and retries instead, caps the open connections, and says so in Python's log.
//
// Python API (module fastserve._native.grpc_transport):
//   Transport(addresses, max_receive_bytes, max_send_bytes, tls=None, max_connections=0,
//             max_concurrent_streams=0, streaming_methods=())
//       tls: (private_key_pem, cert_chain_pem, root_certs_pem, require_client_cert) or None;
//            TLS applies to TCP addresses, unix: sockets stay plain
//       max_connections: connections open at once (more are closed as they arrive); 0 = no cap
//       max_concurrent_streams: calls in flight on one connection (HTTP/2's setting); 0 = gRPC's
//       streaming_methods: methods served as bidirectional streams: each request message of such
//            a call is handed over as a call of its own (its own id; the stream's metadata and
//            deadline); the answers are written to the stream in the order of the requests, and
//            the stream ends OK once the client has finished sending and every answer is written.
//            An answer with a non-OK status ends the stream with it. A message may have several
//            answers (a server stream: health Watch): status kMore (-1) writes one and more follow;
//            status 0 without a payload completes it. At most kStreamWindow messages of one
//            stream wait for answers: beyond them the stream is not read.
//       fixed_reply: bytes or None. Bench-only (bench/ceiling.py, the transport's own ceiling):
//            every unary call is answered OK with these bytes from the completion-queue thread,
//            and Python is never handed a call.
//   start() -> [bound port per address; 0 for unix: addresses]   (raises OSError)
//   fileno() -> the eventfd to wait on
//   take() -> Handoff(calls, cancelled, expired, refused, notices): calls = [Call(id, method,
//             payload, metadata, timeout)] (timeout: seconds left before the call's deadline, or None),
//             cancelled = [id of a taken call the client cancelled or whose deadline passed],
//             expired = [method of each call answered DEADLINE_EXCEEDED here, for the metrics],
//             refused = connections closed at max_connections since the last take (for the metrics),
//             notices = [message for the log: accepting failed or resumed, the cap reached or left]
//   A call whose deadline has passed when its request arrives is answered DEADLINE_EXCEEDED
//   here and never reaches Python; one that expires later is cancelled by gRPC and reported.
//   respond([(id, status_code, message, payload | None)])  status 0 = OK with payload
//   shutdown(grace_s): stop accepting; accepted calls have grace_s to be answered, then are
//             cancelled; returns when the server has stopped.
//   Its threads are named fastserve-cq (the completion queue) and fastserve-acpt (accepting), so
//   that /proc/PID/task/*/comm tells them apart.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

struct Call;

// The records take() hands to Python (named-tuple types: fields by name, and tuples still).
PyStructSequence_Field call_fields[] = {
    {"id", "the call's id, for respond() and in cancelled"},
    {"method", "/package.Service/Method"},
    {"payload", "the serialized request"},
    {"metadata", "((key, value), ...): text values as str, -bin values as bytes"},
    {"timeout", "seconds left before the call's deadline, or None"},
    {nullptr, nullptr},
};
PyStructSequence_Desc call_desc = {"fastserve._native.grpc_transport.Call", "A call whose request has arrived.", call_fields, 5};
PyTypeObject* CallType = nullptr;

PyStructSequence_Field handoff_fields[] = {
    {"calls", "[Call] whose requests arrived since the last take()"},
    {"cancelled", "[id] of taken calls whose client went away or whose deadline passed"},
    {"expired", "[method] of calls answered DEADLINE_EXCEEDED on arrival, never taken (for the metrics)"},
    {"refused", "connections closed at max_connections since the last take() (for the metrics)"},
    {"notices", "[message] for the log: accepting failed or resumed, the connection cap reached or left"},
    {nullptr, nullptr},
};
PyStructSequence_Desc handoff_desc = {"fastserve._native.grpc_transport.Handoff", "What take() hands over.", handoff_fields, 5};
PyTypeObject* HandoffType = nullptr;

// A call's contents as Python gets them, copied out of the call under the server's lock.
struct Taken {
  uint64_t id;
  std::string method;
  std::vector<grpc::Slice> payload;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::chrono::system_clock::time_point deadline;
};

enum class TagKind { kNew, kRead, kWrite, kFinish, kDone, kSend };

constexpr size_t kStreamWindow = 64;  // messages of one stream with Python at once
constexpr int kMore = -1;             // a reply status: one of a stream message's answers, more follow
// Calls requested from gRPC ahead of their arrival. A call that arrives while none is requested
// waits unmatched in gRPC core, and a shutdown then kills it (the client sees CANCELLED, not a
// drain); with several requested, concurrent arrivals are each matched at once.
constexpr int kRequestedCalls = 32;

// The answers to one message of a stream, written in order; complete once Python says so.
struct Answers {
  std::deque<grpc::Slice> parts;
  bool complete = false;
};

struct Tag {
  Call* call;
  TagKind kind;
};

// One RPC from the moment it is requested from the server until its last tag returns.
struct Call {
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream{&ctx};
  grpc::ByteBuffer request;
  Tag new_tag{this, TagKind::kNew};
  Tag read_tag{this, TagKind::kRead};
  Tag write_tag{this, TagKind::kWrite};
  Tag finish_tag{this, TagKind::kFinish};
  Tag done_tag{this, TagKind::kDone};
  uint64_t id = 0;
  // A streaming call's messages: numbered as read; answers wait in `ready` for their turn.
  bool streaming = false;
  bool reading = false;         // a Read is in flight
  bool writing = false;         // a Write is in flight
  bool reads_done = false;      // the client has finished sending
  uint64_t next_read = 0;       // number of the next message read
  uint64_t next_write = 0;      // number of the next answer to write
  size_t with_python_count = 0; // messages handed over and not answered yet
  std::map<uint64_t, Answers> ready;  // by message number
  std::unique_ptr<grpc::Status> finish_after_write;  // an end decided while a Write was in flight
  bool done = false;          // the done tag has returned (call over, or cancelled)
  bool finishing = false;     // Finish has been issued
  bool finished = false;      // ... and its tag has returned
  bool with_python = false;   // taken by (or waiting for) Python, not answered yet
};

// The listening sockets and the thread that accepts on them (see the top of the file).
class Listeners {
 public:
  using Acceptor = grpc::experimental::ExternalConnectionAcceptor;
  // What the accept thread reports: connections refused at the cap, and a line for the log.
  using Report = std::function<void(uint64_t refused, std::string notice)>;

  Listeners(size_t max_connections, Report report) : max_connections_(max_connections), report_(std::move(report)) {}
  ~Listeners() { Stop(); }

  // Binds one address: "host:port" ("[v6]:port"; 0.0.0.0 and :: are, as in gRPC, one dual-stack
  // wildcard socket where IPv6 exists, a host name is every address it resolves to) or
  // "unix:PATH". Sets *port to the bound port (0 for unix:); returns "" or why it failed.
  std::string Bind(const std::string& address, int* port) {
    *port = 0;
    if (address.rfind("unix:", 0) == 0) {
      return BindUnix(address.substr(address.rfind("unix://", 0) == 0 ? 7 : 5));
    }
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) return "no port in " + address;
    std::string host = address.substr(0, colon);
    std::string service = address.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty() || host == "0.0.0.0" || host == "::") {
      sockaddr_in6 any6{};
      any6.sin6_family = AF_INET6;
      any6.sin6_addr = in6addr_any;
      any6.sin6_port = htons(static_cast<uint16_t>(atoi(service.c_str())));
      std::string error = BindOne(reinterpret_cast<sockaddr*>(&any6), sizeof any6, false, port);
      if (error.empty() || error.rfind("socket:", 0) != 0) return error;
      sockaddr_in any4{};  // no IPv6 here
      any4.sin_family = AF_INET;
      any4.sin_addr.s_addr = htonl(INADDR_ANY);
      any4.sin_port = any6.sin6_port;
      return BindOne(reinterpret_cast<sockaddr*>(&any4), sizeof any4, false, port);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
    if (rc != 0) return gai_strerror(rc);
    std::string error;
    bool bound = false;
    for (addrinfo* ai = found; ai; ai = ai->ai_next) {
      if (bound && *port) {  // port 0: every address gets the port the first one got
        if (ai->ai_family == AF_INET) reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_port = htons(*port);
        if (ai->ai_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_port = htons(*port);
      }
      std::string failed = BindOne(ai->ai_addr, ai->ai_addrlen, false, port);
      if (failed.empty()) {
        bound = true;
      } else {
        error = failed;
      }
    }
    freeaddrinfo(found);
    return bound ? "" : error;
  }

  // Starts the accept thread; tcp and local take the connections of TCP and unix: sockets.
  void Start(std::unique_ptr<Acceptor> tcp, std::unique_ptr<Acceptor> local) {
    tcp_ = std::move(tcp);
    local_ = std::move(local);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    thread_ = std::thread([this] { Run(); });
  }

  // Stops accepting and closes the listening sockets (new connections are refused by the kernel).
  void Stop() {
    if (thread_.joinable()) {
      stopping_ = true;
      uint64_t one = 1;
      (void)!write(wake_fd_, &one, sizeof one);
      thread_.join();
    }
    for (const Socket& socket : sockets_) close(socket.fd);
    sockets_.clear();
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
  }

 private:
  struct Socket {
    int fd;
    bool local;  // unix: (plain, no TCP_NODELAY)
  };
  struct Open {  // a connection handed to gRPC: gone once its descriptor is closed or reused
    int fd;
    dev_t dev;
    ino_t ino;
  };
  static constexpr int kRetryMs = 100;  // out of descriptors: how often accepting is tried again

  std::string BindOne(sockaddr* addr, socklen_t len, bool local, int* port) {
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return std::string("socket: ") + strerror(errno);
    int one = 1, zero = 0;
    if (!local) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // no SO_REUSEPORT: a busy port is an error
    if (addr->sa_family == AF_INET6) {  // the wildcard serves IPv4 too; a specific IPv6 address only itself
      bool any = IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<sockaddr_in6*>(addr)->sin6_addr);
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, any ? &zero : &one, sizeof one);
    }
    if (bind(fd, addr, len) != 0 || listen(fd, SOMAXCONN) != 0) {
      std::string error = strerror(errno);
      close(fd);
      return error;
    }
    if (!local && *port == 0) {
      sockaddr_storage bound{};
      socklen_t size = sizeof bound;
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &size);
      *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    }
    sockets_.push_back({fd, local});
    return "";
  }

  std::string BindUnix(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) return "invalid unix socket path";
    memcpy(addr.sun_path, path.data(), path.size());
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());  // a previous run's socket
    int unused = 0;
    return BindOne(reinterpret_cast<sockaddr*>(&addr), sizeof addr, true, &unused);
  }

  void Run() {
    pthread_setname_np(pthread_self(), "fastserve-acpt");
    std::vector<pollfd> polled;
    for (const Socket& socket : sockets_) polled.push_back({socket.fd, POLLIN, 0});
    polled.push_back({wake_fd_, POLLIN, 0});
    while (!stopping_) {
      // Out of descriptors the listening sockets stay readable: wait on the wake-up alone, then retry.
      if (starved_) {
        poll(&polled.back(), 1, kRetryMs);
      } else {
        poll(polled.data(), polled.size(), -1);
      }
      for (size_t i = 0; i < sockets_.size() && !stopping_; ++i) AcceptAll(sockets_[i]);
    }
  }

  void AcceptAll(const Socket& socket) {
    for (;;) {
      int fd = accept4(socket.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        switch (errno) {
          case EMFILE:
          case ENFILE:
          case ENOBUFS:
          case ENOMEM:
            Starved(errno);
            return;
          case EAGAIN:
            return;
          case EINTR:
          case ECONNABORTED:
          case EPROTO:
          case ENETDOWN:
          case ENOPROTOOPT:
          case EHOSTDOWN:
          case ENONET:
          case EHOSTUNREACH:
          case EOPNOTSUPP:
          case ENETUNREACH:
            continue;  // that connection failed (accept(2): retry), not the socket
          default:
            return;  // the socket is being closed
        }
      }
      if (starved_) {
        starved_ = false;
        char line[96];
        snprintf(line, sizeof line, "gRPC accepts connections again, after %.1f s without file descriptors",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - starved_since_).count());
        report_(0, line);
      }
      if (!Admit(fd)) {
        close(fd);
        ++refused_;
        report_(1, refused_ == 1 ? "gRPC connection limit reached (" + std::to_string(max_connections_) +
                                       " open): new connections are closed until some end"
                                 : "");
        continue;
      }
      if (refused_) {
        report_(0, "gRPC connections are below the limit again; " + std::to_string(refused_) + " were refused");
        refused_ = 0;
      }
      if (!socket.local) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // as gRPC's own listener sets it
      }
      Acceptor::NewConnectionParameters connection;
      connection.listener_fd = socket.fd;
      connection.fd = fd;
      (socket.local ? local_ : tcp_)->HandleNewConnection(&connection);
    }
  }

  void Starved(int error) {
    if (starved_) return;
    starved_ = true;
    starved_since_ = std::chrono::steady_clock::now();
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    report_(0, std::string("gRPC cannot accept connections: ") + strerror(error) + " (the process may hold " +
                   std::to_string(limit.rlim_cur) + " file descriptors); retrying every " + std::to_string(kRetryMs) +
                   " ms");
  }

  // Whether a new connection fits under max_connections. gRPC does not say when a connection
  // ends, but it closes its descriptor then: an entry whose descriptor is closed, or now names
  // another file, is gone. They are looked at only at the cap, at most every 10 ms.
  bool Admit(int fd) {
    if (max_connections_ == 0) return true;
    auto now = std::chrono::steady_clock::now();
    if (open_.size() >= max_connections_ && now - last_sweep_ >= std::chrono::milliseconds(10)) {
      last_sweep_ = now;
      size_t kept = 0;
      for (const Open& entry : open_) {
        struct stat st;
        if (fstat(entry.fd, &st) == 0 && st.st_dev == entry.dev && st.st_ino == entry.ino) {
          open_[kept++] = entry;
        }
      }
      open_.resize(kept);
    }
    if (open_.size() >= max_connections_) return false;
    struct stat st;
    if (fstat(fd, &st) != 0) return false;
    open_.push_back({fd, st.st_dev, st.st_ino});
    return true;
  }

  size_t max_connections_;
  Report report_;
  std::vector<Socket> sockets_;
  std::unique_ptr<Acceptor> tcp_, local_;
  int wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  // The accept thread's own.
  bool starved_ = false;
  std::chrono::steady_clock::time_point starved_since_;
  uint64_t refused_ = 0;  // since the cap was last reached
  std::vector<Open> open_;
  std::chrono::steady_clock::time_point last_sweep_;
};

class Server {
 public:
  Server(std::vector<std::string> addresses, int max_receive, int max_send,
         std::shared_ptr<grpc::ServerCredentials> creds, size_t max_connections, int max_concurrent_streams,
         std::unordered_set<std::string> streaming_methods, std::optional<grpc::Slice> fixed_reply)
      : addresses_(std::move(addresses)), max_receive_(max_receive), max_send_(max_send),
        max_concurrent_streams_(max_concurrent_streams), streaming_methods_(std::move(streaming_methods)),
        fixed_reply_(std::move(fixed_reply)), creds_(std::move(creds)),
        listeners_(max_connections, [this](uint64_t refused, std::string notice) { Report(refused, std::move(notice)); }) {
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }

  ~Server() {
    Stop(0);
    if (event_fd_ >= 0) close(event_fd_);
  }

  int event_fd() const { return event_fd_; }

  // Binds every address; returns the bound ports, or an error message.
  std::string Start(std::vector<int>* ports) {
    ports->assign(addresses_.size(), 0);
    for (size_t i = 0; i < addresses_.size(); ++i) {
      std::string error = listeners_.Bind(addresses_[i], &(*ports)[i]);
      if (!error.empty()) {
        listeners_.Stop();
        return "cannot listen for gRPC on " + addresses_[i] + ": " + error;
      }
    }
    grpc::ServerBuilder builder;
    using Type = grpc::ServerBuilder::experimental_type::ExternalConnectionType;
    auto tcp = builder.experimental().AddExternalConnectionAcceptor(Type::FROM_FD, creds_);
    // a local socket needs no TLS
    auto local = builder.experimental().AddExternalConnectionAcceptor(Type::FROM_FD, grpc::InsecureServerCredentials());
    builder.SetMaxReceiveMessageSize(max_receive_);
    builder.SetMaxSendMessageSize(max_send_);
    if (max_concurrent_streams_ > 0) builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_concurrent_streams_);
    builder.RegisterAsyncGenericService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_) {
      listeners_.Stop();
      return "cannot start the gRPC server on " + Join(addresses_);
    }
    for (int i = 0; i < kRequestedCalls; ++i) RequestNext();  // each arrival then requests the next
    thread_ = std::thread([this] { Run(); });
    listeners_.Start(std::move(tcp), std::move(local));
    return "";
  }

  // Called with the GIL: hand every pending call and cancellation to Python. mu_ is taken
  // with the GIL released (the CQ thread holds mu_ while it drives gRPC, and Python's other
  // threads must not wait for that), and the calls' contents are copied out under mu_ (Stop
  // may free a call once mu_ is released), then turned into Python objects without mu_.
  PyObject* Take() {
    std::vector<Taken> calls;
    std::vector<uint64_t> cancelled;
    std::vector<std::string> expired;
    std::vector<std::string> notices;
    uint64_t refused;
    Py_BEGIN_ALLOW_THREADS
    {
      std::lock_guard<std::mutex> lock(mu_);
      uint64_t counter;
      (void)!read(event_fd_, &counter, sizeof counter);  // re-arm the wake-up
      signalled_ = false;
      calls.reserve(pending_.size());
      for (Call* call : pending_) calls.push_back(TakeOut(call));
      pending_.clear();
      for (Taken& message : pending_messages_) calls.push_back(std::move(message));
      pending_messages_.clear();
      cancelled.swap(cancelled_);
      expired.swap(expired_);
      notices.swap(notices_);
      refused = refused_;
      refused_ = 0;
    }
    Py_END_ALLOW_THREADS
    PyObject* call_list = PyList_New(calls.size());
    if (!call_list) return nullptr;
    auto now = std::chrono::system_clock::now();
    for (size_t i = 0; i < calls.size(); ++i) {
      PyObject* item = TakenToPython(calls[i], now);
      if (!item) {
        Py_DECREF(call_list);
        return nullptr;
      }
      PyList_SET_ITEM(call_list, i, item);
    }
    PyObject* cancelled_list = PyList_New(cancelled.size());
    if (!cancelled_list) {
      Py_DECREF(call_list);
      return nullptr;
    }
    for (size_t i = 0; i < cancelled.size(); ++i) {
      PyList_SET_ITEM(cancelled_list, i, PyLong_FromUnsignedLongLong(cancelled[i]));
    }
    PyObject* expired_list = PyList_New(expired.size());
    for (size_t i = 0; expired_list && i < expired.size(); ++i) {
      PyObject* method = PyUnicode_DecodeUTF8(expired[i].data(), expired[i].size(), "replace");
      if (!method) {
        Py_CLEAR(expired_list);
        break;
      }
      PyList_SET_ITEM(expired_list, i, method);
    }
    PyObject* notice_list = PyList_New(notices.size());
    for (size_t i = 0; notice_list && i < notices.size(); ++i) {
      PyObject* notice = PyUnicode_DecodeUTF8(notices[i].data(), notices[i].size(), "replace");
      if (!notice) {
        Py_CLEAR(notice_list);
        break;
      }
      PyList_SET_ITEM(notice_list, i, notice);
    }
    PyObject* refused_count = PyLong_FromUnsignedLongLong(refused);
    PyObject* result = expired_list && notice_list && refused_count ? PyStructSequence_New(HandoffType) : nullptr;
    if (!result) {
      Py_DECREF(call_list);
      Py_DECREF(cancelled_list);
      Py_XDECREF(expired_list);
      Py_XDECREF(notice_list);
      Py_XDECREF(refused_count);
      return nullptr;
    }
    PyStructSequence_SET_ITEM(result, 0, call_list);  // the references pass to the record
    PyStructSequence_SET_ITEM(result, 1, cancelled_list);
    PyStructSequence_SET_ITEM(result, 2, expired_list);
    PyStructSequence_SET_ITEM(result, 3, refused_count);
    PyStructSequence_SET_ITEM(result, 4, notice_list);
    return result;
  }

  struct Reply {
    uint64_t id;
    int code;
    std::string message;
    bool has_payload;
    grpc::Slice payload;
  };

  // Without the GIL: queue a batch of answers for the CQ thread to send.
  void Respond(std::vector<Reply>& replies) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cq_shut_down_) return;  // too late: the server is gone; the calls are freed at the end
    for (Reply& reply : replies) outgoing_.push_back(std::move(reply));
    if (!send_armed_ && !outgoing_.empty()) {
      send_armed_ = true;
      // In the past, not now: gRPC rounds a deadline up to its next millisecond, so "now" fires up
      // to 1 ms later, on the timer thread (a lone client's calls took 1 or 2 ms, never between).
      send_alarm_.Set(cq_.get(), gpr_inf_past(GPR_CLOCK_MONOTONIC), &send_tag_);
    }
  }

  // Without the GIL. Stops accepting at once; accepted calls have `grace` seconds.
  void Stop(double grace) {
    std::unique_lock<std::mutex> stop_lock(stop_mu_);
    if (!server_ || stopped_) return;
    stopped_ = true;
    listeners_.Stop();
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(grace * 1e6));
    server_->Shutdown(deadline);  // waits for accepted calls, cancels what is left at the deadline
    // Cancelled calls still with Python get a moment to be answered (Python sees them cancelled).
    auto answered_by = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < answered_by) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (by_id_.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      cq_shut_down_ = true;
      cq_->Shutdown();
    }
    thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (Call* call : live_) delete call;
    live_.clear();
    pending_.clear();
    by_id_.clear();
    messages_.clear();
    pending_messages_.clear();
    outgoing_.clear();
  }

 private:
  static std::string Join(const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& part : parts) out += (out.empty() ? "" : ", ") + part;
    return out;
  }

  // Asks the server for the next call (CQ thread, or Start before the thread runs).
  void RequestNext() {
    Call* call = new Call();
    live_.insert(call);
    call->ctx.AsyncNotifyWhenDone(&call->done_tag);
    service_.RequestCall(&call->ctx, &call->stream, cq_.get(), cq_.get(), &call->new_tag);
  }

  void Run() {
    pthread_setname_np(pthread_self(), "fastserve-cq");
    void* raw;
    bool ok;
    while (cq_->Next(&raw, &ok)) {
      Tag* tag = static_cast<Tag*>(raw);
      std::lock_guard<std::mutex> lock(mu_);
      if (tag->kind == TagKind::kSend) {
        SendReplies();
      } else {
        Handle(tag->call, tag->kind, ok);
      }
    }
  }

  // CQ thread, under mu_: Finish every call Python has answered. Unknown ids are ignored.
  void SendReplies() {
    send_armed_ = false;
    std::vector<Reply> replies;
    replies.swap(outgoing_);
    for (Reply& reply : replies) {
      auto message = messages_.find(reply.id);
      if (message != messages_.end()) {
        Call* call = message->second.first;
        uint64_t number = message->second.second;
        if (reply.code != kMore) {
          messages_.erase(message);
          call->with_python_count--;
        }
        if (!cq_shut_down_) Answered(call, number, reply);
        MaybeDelete(call);
        continue;
      }
      auto it = by_id_.find(reply.id);
      if (it == by_id_.end()) continue;
      Call* call = it->second;
      by_id_.erase(it);
      call->with_python = false;
      if (cq_shut_down_) continue;  // freed at the end
      if (reply.code == 0 && reply.has_payload) {
        grpc::ByteBuffer buffer(&reply.payload, 1);
        FinishLocked(call, grpc::Status::OK, &buffer);
      } else {
        FinishLocked(call, grpc::Status(static_cast<grpc::StatusCode>(reply.code), reply.message), nullptr);
      }
    }
  }

  void Drain() {
    void* raw;
    bool ok;
    while (cq_->Next(&raw, &ok)) {
    }
    for (Call* call : live_) delete call;
    live_.clear();
  }

  // CQ thread, under mu_.
  void Handle(Call* call, TagKind kind, bool ok) {
    switch (kind) {
      case TagKind::kNew:
        if (!ok) return;  // shutting down; freed after the queue drains
        if (!cq_shut_down_) RequestNext();
        call->streaming = streaming_methods_.count(call->ctx.method()) > 0;
        call->reading = true;
        call->stream.Read(&call->request, &call->read_tag);
        return;
      case TagKind::kRead:
        call->reading = false;
        if (call->streaming) {
          StreamRead(call, ok);
          break;
        }
        if (!ok) {
          FinishLocked(call, grpc::Status(grpc::StatusCode::CANCELLED, "no request message"), nullptr);
        } else if (call->ctx.deadline() <= std::chrono::system_clock::now()) {
          FinishLocked(call, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), nullptr);
          expired_.push_back(call->ctx.method());
          Signal();
        } else if (fixed_reply_) {  // bench-only: the transport's ceiling
          grpc::ByteBuffer reply(&*fixed_reply_, 1);
          FinishLocked(call, grpc::Status::OK, &reply);
        } else {
          Enqueue(call);
        }
        break;
      case TagKind::kWrite:
        call->writing = false;
        if (!ok) {  // the stream is gone: its end comes with the done tag
          call->ready.clear();
          if (!call->finishing) FinishLocked(call, grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke"), nullptr);
        } else {
          WriteNext(call);
        }
        break;
      case TagKind::kFinish:
        call->finished = true;
        break;
      case TagKind::kDone:
        call->done = true;
        if (call->with_python && call->ctx.IsCancelled()) {
          cancelled_.push_back(call->id);
          Signal();
        }
        if (call->streaming && call->ctx.IsCancelled()) {
          for (const auto& entry : messages_) {
            if (entry.second.first == call) cancelled_.push_back(entry.first);
          }
          Signal();
          call->ready.clear();
          EndStream(call, grpc::Status(grpc::StatusCode::CANCELLED, "Cancelled"));
        }
        break;
      case TagKind::kSend:
        break;  // handled in Run
    }
    MaybeDelete(call);
  }

  // Under mu_: a call is freed once gRPC has returned every tag it was given and Python holds
  // none of its messages.
  void MaybeDelete(Call* call) {
    if (call->done && call->finished && !call->reading && !call->writing && call->with_python_count == 0) {
      live_.erase(call);
      delete call;
    }
  }

  // A streaming call's read returned: hand the message over and read on (within the window),
  // or note that the client has finished sending.
  void StreamRead(Call* call, bool ok) {
    if (!ok) {
      call->reads_done = true;
      WriteNext(call);
      return;
    }
    if (call->finishing) return;
    if (call->ctx.deadline() <= std::chrono::system_clock::now()) {
      expired_.push_back(call->ctx.method());
      Signal();
      call->ready.clear();
      EndStream(call, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"));
      return;
    }
    uint64_t id = ++last_id_;
    messages_.emplace(id, std::make_pair(call, call->next_read++));
    call->with_python_count++;
    Taken taken = TakeOut(call);
    taken.id = id;
    pending_messages_.push_back(std::move(taken));
    Signal();
    ReadMore(call);
  }

  void ReadMore(Call* call) {
    if (call->reading || call->reads_done || call->finishing || call->with_python_count >= kStreamWindow) return;
    call->reading = true;
    call->stream.Read(&call->request, &call->read_tag);
  }

  // Python answered message `number` of a stream: OK answers (kMore, or 0 for the last) are
  // written in their turn; any other status ends the stream with it.
  void Answered(Call* call, uint64_t number, Reply& reply) {
    if (call->finishing || call->finish_after_write) return;
    if (reply.code != 0 && reply.code != kMore) {
      call->ready.clear();
      EndStream(call, grpc::Status(static_cast<grpc::StatusCode>(reply.code), reply.message));
      return;
    }
    Answers& answers = call->ready[number];
    if (reply.has_payload) answers.parts.push_back(std::move(reply.payload));
    answers.complete = reply.code == 0;
    WriteNext(call);
    ReadMore(call);
  }

  // Writes the next answer in order; ends the stream once the client is done and all is written.
  void WriteNext(Call* call) {
    if (call->writing || call->finishing) return;
    if (call->finish_after_write) {
      grpc::Status status = *call->finish_after_write;
      call->finish_after_write.reset();
      FinishLocked(call, status, nullptr);
      return;
    }
    for (auto next = call->ready.find(call->next_write); next != call->ready.end();
         next = call->ready.find(call->next_write)) {
      Answers& answers = next->second;
      if (!answers.parts.empty()) {
        grpc::ByteBuffer buffer(&answers.parts.front(), 1);
        answers.parts.pop_front();
        call->writing = true;
        call->stream.Write(buffer, &call->write_tag);
        return;
      }
      if (!answers.complete) return;  // more answers to this message will follow
      call->ready.erase(next);
      call->next_write++;
    }
    if (call->reads_done && call->with_python_count == 0 && call->ready.empty()) {
      FinishLocked(call, grpc::Status::OK, nullptr);
    }
  }

  // Ends a stream now, or after the Write in flight (one operation at a time).
  void EndStream(Call* call, const grpc::Status& status) {
    if (call->finishing) return;
    if (call->writing) {
      if (!call->finish_after_write) call->finish_after_write = std::make_unique<grpc::Status>(status);
      return;
    }
    FinishLocked(call, status, nullptr);
  }

  // The accept thread: connections refused at the cap, and a line for Python's log.
  void Report(uint64_t refused, std::string notice) {
    std::lock_guard<std::mutex> lock(mu_);
    refused_ += refused;
    if (!notice.empty()) notices_.push_back(std::move(notice));
    Signal();
  }

  void Enqueue(Call* call) {
    call->id = ++last_id_;
    call->with_python = true;
    by_id_.emplace(call->id, call);
    pending_.push_back(call);
    Signal();
  }

  void Signal() {
    if (signalled_) return;
    signalled_ = true;
    uint64_t one = 1;
    (void)!write(event_fd_, &one, sizeof one);
  }

  void FinishLocked(Call* call, const grpc::Status& status, grpc::ByteBuffer* payload) {
    call->finishing = true;
    if (payload) {
      call->stream.WriteAndFinish(*payload, grpc::WriteOptions(), status, &call->finish_tag);
    } else {
      call->stream.Finish(status, &call->finish_tag);
    }
  }

  // Under mu_: what Python needs of a call, owned here (the payload's slices are ref-counted).
  Taken TakeOut(Call* call) {
    Taken taken;
    taken.id = call->id;
    taken.method = call->ctx.method();
    call->request.Dump(&taken.payload);
    call->request.Clear();
    for (const auto& entry : call->ctx.client_metadata()) {
      taken.metadata.emplace_back(std::string(entry.first.data(), entry.first.size()),
                                  std::string(entry.second.data(), entry.second.size()));
    }
    taken.deadline = call->ctx.deadline();
    return taken;
  }

  // Under the GIL: (id, method, payload, metadata, timeout_s | None).
  static PyObject* TakenToPython(const Taken& call, std::chrono::system_clock::time_point now) {
    size_t size = 0;
    for (const auto& slice : call.payload) size += slice.size();
    PyObject* payload = PyBytes_FromStringAndSize(nullptr, size);
    if (!payload) return nullptr;
    char* out = PyBytes_AS_STRING(payload);
    for (const auto& slice : call.payload) {
      memcpy(out, slice.begin(), slice.size());
      out += slice.size();
    }
    PyObject* metadata = PyTuple_New(call.metadata.size());
    if (!metadata) {
      Py_DECREF(payload);
      return nullptr;
    }
    Py_ssize_t i = 0;
    for (const auto& entry : call.metadata) {
      const std::string& key = entry.first;
      const std::string& value = entry.second;
      bool binary = key.size() > 4 && memcmp(key.data() + key.size() - 4, "-bin", 4) == 0;
      PyObject* pair = Py_BuildValue(binary ? "(s#y#)" : "(s#s#)", key.data(), (Py_ssize_t)key.size(),
                                     value.data(), (Py_ssize_t)value.size());
      if (!pair) {
        // A non-UTF-8 text value: hand it over as bytes rather than fail the call.
        PyErr_Clear();
        pair = Py_BuildValue("(s#y#)", key.data(), (Py_ssize_t)key.size(), value.data(), (Py_ssize_t)value.size());
      }
      if (!pair) {
        Py_DECREF(payload);
        Py_DECREF(metadata);
        return nullptr;
      }
      PyTuple_SET_ITEM(metadata, i++, pair);
    }
    PyObject* timeout;
    if (call.deadline == std::chrono::system_clock::time_point::max()) {
      timeout = Py_NewRef(Py_None);
    } else {
      timeout = PyFloat_FromDouble(std::chrono::duration<double>(call.deadline - now).count());
    }
    PyObject* id = PyLong_FromUnsignedLongLong(call.id);
    PyObject* method = PyUnicode_DecodeUTF8(call.method.data(), call.method.size(), "replace");
    PyObject* record = id && method && timeout ? PyStructSequence_New(CallType) : nullptr;
    if (!record) {
      Py_XDECREF(id);
      Py_XDECREF(method);
      Py_XDECREF(timeout);
      Py_DECREF(payload);
      Py_DECREF(metadata);
      return nullptr;
    }
    PyStructSequence_SET_ITEM(record, 0, id);
    PyStructSequence_SET_ITEM(record, 1, method);
    PyStructSequence_SET_ITEM(record, 2, payload);
    PyStructSequence_SET_ITEM(record, 3, metadata);
    PyStructSequence_SET_ITEM(record, 4, timeout);
    return record;
  }

  std::vector<std::string> addresses_;
  int max_receive_;
  int max_send_;
  int max_concurrent_streams_;
  std::unordered_set<std::string> streaming_methods_;
  std::optional<grpc::Slice> fixed_reply_;  // bench-only: answer every unary call with it, from C++
  std::shared_ptr<grpc::ServerCredentials> creds_;
  int event_fd_ = -1;

  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::thread thread_;
  grpc::Alarm send_alarm_;  // wakes the CQ thread to send queued replies
  Tag send_tag_{nullptr, TagKind::kSend};

  std::mutex stop_mu_;
  bool stopped_ = false;

  // Everything below is guarded by mu_.
  std::mutex mu_;
  std::unordered_set<Call*> live_;
  std::unordered_map<uint64_t, Call*> by_id_;  // calls Python has to answer
  std::vector<Call*> pending_;                 // ... of which these are not taken yet
  std::unordered_map<uint64_t, std::pair<Call*, uint64_t>> messages_;  // stream messages with Python: (call, number)
  std::vector<Taken> pending_messages_;        // ... of which these are not taken yet (copied: the stream reads on)
  std::vector<uint64_t> cancelled_;
  std::vector<std::string> expired_;  // methods of calls answered DEADLINE_EXCEEDED on arrival
  std::vector<std::string> notices_;  // from the accept thread, for Python's log
  uint64_t refused_ = 0;              // connections the accept thread closed at the cap
  std::vector<Reply> outgoing_;  // answered by Python, not sent yet
  bool send_armed_ = false;
  uint64_t last_id_ = 0;
  bool signalled_ = false;
  bool cq_shut_down_ = false;

  Listeners listeners_;  // last: its thread reports into the members above, so it stops first
};

// ---------------------------------------------------------------- Python type

struct TransportObject {
  PyObject_HEAD
  Server* server;
};

std::string BytesArg(PyObject* obj, const char* what, bool* ok) {
  if (obj == Py_None) return "";
  char* data;
  Py_ssize_t size;
  if (PyBytes_Check(obj)) {
    PyBytes_AsStringAndSize(obj, &data, &size);
    return std::string(data, size);
  }
  if (PyUnicode_Check(obj)) {
    const char* text = PyUnicode_AsUTF8AndSize(obj, &size);
    if (text) return std::string(text, size);
  }
  PyErr_Format(PyExc_TypeError, "%s must be str or bytes", what);
  *ok = false;
  return "";
}

int Transport_init(TransportObject* self, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"addresses", "max_receive_bytes", "max_send_bytes", "tls", "max_connections",
                                   "max_concurrent_streams", "streaming_methods", "fixed_reply", nullptr};
  PyObject* addresses;
  int max_receive, max_send;
  PyObject* tls = Py_None;
  Py_ssize_t max_connections = 0;
  int max_concurrent_streams = 0;
  PyObject* streaming = nullptr;
  PyObject* fixed = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oii|OniOO", const_cast<char**>(keywords), &addresses,
                                   &max_receive, &max_send, &tls, &max_connections, &max_concurrent_streams,
                                   &streaming, &fixed)) {
    return -1;
  }
  std::optional<grpc::Slice> fixed_reply;
  if (fixed != Py_None) {
    if (!PyBytes_Check(fixed)) {
      PyErr_SetString(PyExc_TypeError, "fixed_reply must be bytes or None");
      return -1;
    }
    fixed_reply.emplace(PyBytes_AS_STRING(fixed), PyBytes_GET_SIZE(fixed));
  }
  std::unordered_set<std::string> streaming_methods;
  if (streaming) {
    PyObject* names = PySequence_Fast(streaming, "streaming_methods must be a sequence of str");
    if (!names) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(names); ++i) {
      const char* text = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(names, i));
      if (!text) {
        Py_DECREF(names);
        return -1;
      }
      streaming_methods.emplace(text);
    }
    Py_DECREF(names);
  }
  PyObject* seq = PySequence_Fast(addresses, "addresses must be a sequence of str");
  if (!seq) return -1;
  std::vector<std::string> addrs;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); ++i) {
    const char* text = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
    if (!text) {
      Py_DECREF(seq);
      return -1;
    }
    addrs.emplace_back(text);
  }
  Py_DECREF(seq);
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls == Py_None) {
    creds = grpc::InsecureServerCredentials();
  } else {
    PyObject *key, *cert, *roots;
    int require_client_cert;
    if (!PyArg_ParseTuple(tls, "OOOp", &key, &cert, &roots, &require_client_cert)) return -1;
    bool ok = true;
    grpc::SslServerCredentialsOptions options(
        require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    pair.private_key = BytesArg(key, "tls private key", &ok);
    pair.cert_chain = BytesArg(cert, "tls certificate chain", &ok);
    options.pem_root_certs = BytesArg(roots, "tls root certificates", &ok);
    if (!ok) return -1;
    options.pem_key_cert_pairs.push_back(pair);
    creds = grpc::SslServerCredentials(options);
  }
  delete self->server;
  self->server = new Server(std::move(addrs), max_receive, max_send, std::move(creds),
                            max_connections > 0 ? static_cast<size_t>(max_connections) : 0, max_concurrent_streams,
                            std::move(streaming_methods), std::move(fixed_reply));
  if (self->server->event_fd() < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  return 0;
}

void Transport_dealloc(TransportObject* self) {
  if (self->server) {
    Server* server = self->server;
    self->server = nullptr;
    Py_BEGIN_ALLOW_THREADS delete server;
    Py_END_ALLOW_THREADS
  }
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

bool Ready(TransportObject* self) {
  if (self->server) return true;
  PyErr_SetString(PyExc_RuntimeError, "Transport is not initialized");
  return false;
}

PyObject* Transport_start(TransportObject* self, PyObject*) {
  if (!Ready(self)) return nullptr;
  std::vector<int> ports;
  std::string error;
  Py_BEGIN_ALLOW_THREADS error = self->server->Start(&ports);
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_OSError, error.c_str());
    return nullptr;
  }
  PyObject* list = PyList_New(ports.size());
  for (size_t i = 0; i < ports.size(); ++i) PyList_SET_ITEM(list, i, PyLong_FromLong(ports[i]));
  return list;
}

PyObject* Transport_fileno(TransportObject* self, PyObject*) {
  if (!Ready(self)) return nullptr;
  return PyLong_FromLong(self->server->event_fd());
}

PyObject* Transport_take(TransportObject* self, PyObject*) {
  if (!Ready(self)) return nullptr;
  return self->server->Take();
}

PyObject* Transport_respond(TransportObject* self, PyObject* replies_obj) {
  if (!Ready(self)) return nullptr;
  PyObject* seq = PySequence_Fast(replies_obj, "respond() takes a sequence of replies");
  if (!seq) return nullptr;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  std::vector<Server::Reply> replies(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    unsigned long long id;
    int code;
    const char* message;
    Py_ssize_t message_size;
    PyObject* payload;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "Kis#O", &id, &code, &message, &message_size,
                          &payload)) {
      Py_DECREF(seq);
      return nullptr;
    }
    Server::Reply& reply = replies[i];
    reply.id = id;
    reply.code = code;
    reply.message.assign(message, message_size);
    reply.has_payload = payload != Py_None;
    if (reply.has_payload) {
      if (!PyBytes_Check(payload)) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_TypeError, "a reply's payload must be bytes or None");
        return nullptr;
      }
      reply.payload = grpc::Slice(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload));
    }
  }
  Py_DECREF(seq);
  Py_BEGIN_ALLOW_THREADS self->server->Respond(replies);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* Transport_shutdown(TransportObject* self, PyObject* arg) {
  if (!Ready(self)) return nullptr;
  double grace = PyFloat_AsDouble(arg);
  if (grace == -1.0 && PyErr_Occurred()) return nullptr;
  Py_BEGIN_ALLOW_THREADS self->server->Stop(grace);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyMethodDef transport_methods[] = {
    {"start", (PyCFunction)Transport_start, METH_NOARGS, "Bind and start serving; returns the bound ports."},
    {"fileno", (PyCFunction)Transport_fileno, METH_NOARGS, "The eventfd that is readable when calls wait."},
    {"take", (PyCFunction)Transport_take, METH_NOARGS, "Handoff(calls, cancelled, expired) waiting for Python."},
    {"respond", (PyCFunction)Transport_respond, METH_O, "Answer calls: [(id, code, message, payload)]."},
    {"shutdown", (PyCFunction)Transport_shutdown, METH_O, "Stop accepting, drain for grace seconds, stop."},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject TransportType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "grpc_transport",
                          "gRPC server on libgrpc++'s completion queue, handing call batches to Python.", -1};

}  // namespace

PyMODINIT_FUNC PyInit_grpc_transport(void) {
  TransportType.tp_name = "fastserve._native.grpc_transport.Transport";
  TransportType.tp_basicsize = sizeof(TransportObject);
  TransportType.tp_flags = Py_TPFLAGS_DEFAULT;
  TransportType.tp_doc = "A native gRPC server; see the module source for the protocol.";
  TransportType.tp_new = PyType_GenericNew;
  TransportType.tp_init = (initproc)Transport_init;
  TransportType.tp_dealloc = (destructor)Transport_dealloc;
  TransportType.tp_methods = transport_methods;
  if (PyType_Ready(&TransportType) < 0) return nullptr;
  CallType = PyStructSequence_NewType(&call_desc);
  HandoffType = PyStructSequence_NewType(&handoff_desc);
  if (!CallType || !HandoffType) return nullptr;
  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
  if (PyModule_AddObjectRef(module, "Call", reinterpret_cast<PyObject*>(CallType)) < 0 ||
      PyModule_AddObjectRef(module, "Handoff", reinterpret_cast<PyObject*>(HandoffType)) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  Py_INCREF(&TransportType);
  if (PyModule_AddObject(module, "Transport", reinterpret_cast<PyObject*>(&TransportType)) < 0) {
    Py_DECREF(&TransportType);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
