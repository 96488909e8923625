// Native gRPC transport: a C++ completion-queue server that hands batches of calls to Python.
//
// The server is gRPC's generic (raw-bytes) service, so no protobuf is linked in: Python
// parses and serializes the messages. One C++ thread drives the completion queue and never
// touches Python. Calls whose request has arrived wait in a list; an eventfd becomes readable
// when that list turns non-empty, and Python's event loop takes every pending call at once
// (take). Python's answers (respond) are queued and an alarm wakes the completion-queue thread,
// which sends them: Python never waits on gRPC's sends.
//
// Python API (module fastserve._native.grpc_transport):
//   Transport(addresses, max_receive_bytes, max_send_bytes, tls=None)
//       tls: (private_key_pem, cert_chain_pem, root_certs_pem, require_client_cert) or None;
//            TLS applies to TCP addresses, unix: sockets stay plain
//   start() -> [bound port per address; 0 for unix: addresses]   (raises OSError)
//   fileno() -> the eventfd to wait on
//   take() -> Handoff(calls, cancelled, expired): calls = [Call(id, method, payload, metadata, timeout)]
//             (timeout: seconds left before the call's deadline, or None),
//             cancelled = [id of a taken call the client cancelled or whose deadline passed],
//             expired = [method of each call answered DEADLINE_EXCEEDED here, for the metrics]
//   A call whose deadline has passed when its request arrives is answered DEADLINE_EXCEEDED
//   here and never reaches Python; one that expires later is cancelled by gRPC and reported.
//   respond([(id, status_code, message, payload | None)])  status 0 = OK with payload
//   shutdown(grace_s): stop accepting; accepted calls have grace_s to be answered, then are
//             cancelled; returns when the server has stopped.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
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
    {nullptr, nullptr},
};
PyStructSequence_Desc handoff_desc = {"fastserve._native.grpc_transport.Handoff", "What take() hands over.", handoff_fields, 3};
PyTypeObject* HandoffType = nullptr;

// A call's contents as Python gets them, copied out of the call under the server's lock.
struct Taken {
  uint64_t id;
  std::string method;
  std::vector<grpc::Slice> payload;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::chrono::system_clock::time_point deadline;
};

enum class TagKind { kNew, kRead, kFinish, kDone, kSend };

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
  Tag finish_tag{this, TagKind::kFinish};
  Tag done_tag{this, TagKind::kDone};
  uint64_t id = 0;
  bool started = false;       // the server matched it to a client call
  bool done = false;          // the done tag has returned (call over, or cancelled)
  bool finishing = false;     // Finish has been issued
  bool finished = false;      // ... and its tag has returned
  bool with_python = false;   // taken by (or waiting for) Python, not answered yet
};

class Server {
 public:
  Server(std::vector<std::string> addresses, int max_receive, int max_send,
         std::shared_ptr<grpc::ServerCredentials> creds)
      : addresses_(std::move(addresses)), max_receive_(max_receive), max_send_(max_send),
        creds_(std::move(creds)) {
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }

  ~Server() {
    Stop(0);
    if (event_fd_ >= 0) close(event_fd_);
  }

  int event_fd() const { return event_fd_; }

  // Binds every address; returns the bound ports, or an error message.
  std::string Start(std::vector<int>* ports) {
    grpc::ServerBuilder builder;
    ports->assign(addresses_.size(), 0);
    for (size_t i = 0; i < addresses_.size(); ++i) {
      bool local = addresses_[i].rfind("unix:", 0) == 0;  // a local socket needs no TLS
      builder.AddListeningPort(addresses_[i], local ? grpc::InsecureServerCredentials() : creds_, &(*ports)[i]);
    }
    builder.SetMaxReceiveMessageSize(max_receive_);
    builder.SetMaxSendMessageSize(max_send_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a busy port is an error
    builder.RegisterAsyncGenericService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_) return "cannot start the gRPC server on " + Join(addresses_);
    for (size_t i = 0; i < addresses_.size(); ++i) {
      if ((*ports)[i] == 0 && addresses_[i].rfind("unix:", 0) != 0) {
        server_->Shutdown();
        cq_->Shutdown();
        Drain();
        server_.reset();
        return "cannot listen for gRPC on " + addresses_[i];
      }
    }
    RequestNext();
    thread_ = std::thread([this] { Run(); });
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
    Py_BEGIN_ALLOW_THREADS
    {
      std::lock_guard<std::mutex> lock(mu_);
      uint64_t counter;
      (void)!read(event_fd_, &counter, sizeof counter);  // re-arm the wake-up
      signalled_ = false;
      calls.reserve(pending_.size());
      for (Call* call : pending_) calls.push_back(TakeOut(call));
      pending_.clear();
      cancelled.swap(cancelled_);
      expired.swap(expired_);
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
    if (!expired_list) {
      Py_DECREF(call_list);
      Py_DECREF(cancelled_list);
      return nullptr;
    }
    PyObject* result = PyStructSequence_New(HandoffType);
    if (!result) {
      Py_DECREF(call_list);
      Py_DECREF(cancelled_list);
      Py_DECREF(expired_list);
      return nullptr;
    }
    PyStructSequence_SET_ITEM(result, 0, call_list);  // the references pass to the record
    PyStructSequence_SET_ITEM(result, 1, cancelled_list);
    PyStructSequence_SET_ITEM(result, 2, expired_list);
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
      send_alarm_.Set(cq_.get(), gpr_now(GPR_CLOCK_MONOTONIC), &send_tag_);  // fires at once
    }
  }

  // Without the GIL. Stops accepting at once; accepted calls have `grace` seconds.
  void Stop(double grace) {
    std::unique_lock<std::mutex> stop_lock(stop_mu_);
    if (!server_ || stopped_) return;
    stopped_ = true;
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
        call->started = true;
        if (!cq_shut_down_) RequestNext();
        call->stream.Read(&call->request, &call->read_tag);
        return;
      case TagKind::kRead:
        if (!ok) {
          FinishLocked(call, grpc::Status(grpc::StatusCode::CANCELLED, "no request message"), nullptr);
        } else if (call->ctx.deadline() <= std::chrono::system_clock::now()) {
          FinishLocked(call, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), nullptr);
          expired_.push_back(call->ctx.method());
          Signal();
        } else {
          Enqueue(call);
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
        break;
      case TagKind::kSend:
        break;  // handled in Run
    }
    if (call->done && call->finished) {
      live_.erase(call);
      delete call;
    }
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
  std::vector<uint64_t> cancelled_;
  std::vector<std::string> expired_;  // methods of calls answered DEADLINE_EXCEEDED on arrival
  std::vector<Reply> outgoing_;  // answered by Python, not sent yet
  bool send_armed_ = false;
  uint64_t last_id_ = 0;
  bool signalled_ = false;
  bool cq_shut_down_ = false;
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
  static const char* keywords[] = {"addresses", "max_receive_bytes", "max_send_bytes", "tls", nullptr};
  PyObject* addresses;
  int max_receive, max_send;
  PyObject* tls = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Oii|O", const_cast<char**>(keywords), &addresses,
                                   &max_receive, &max_send, &tls)) {
    return -1;
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
  self->server = new Server(std::move(addrs), max_receive, max_send, std::move(creds));
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
