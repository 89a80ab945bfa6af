// Where the extension's custom calls run (onednn_conv.cc, block_tail.cc): one thread of the extension's own.
//
// XLA:CPU calls a custom call's handler from whichever of its pool threads runs it. Run there, every such thread
// becomes the master of an OpenMP team of its own (libgomp keeps one pool of workers per master thread): with
// XLA's 2 pool threads on 2 cores, 2 teams of spinning OpenMP threads then compete with XLA's threads and with
// each other, and oneDNN kernels that synchronise their threads (the backward-weights reductions) stall for
// whole scheduler time slices. Here every call is handed to one thread, the master of oneDNN's one OpenMP team,
// and the calling thread sleeps until it is done.
#ifndef FCDD_ONEDNN_RUNTIME_H_
#define FCDD_ONEDNN_RUNTIME_H_

#include <pthread.h>

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace fcdd_onednn {

class Worker {
 public:
  static Worker& Get() {
    static Worker* w = new Worker();  // never destroyed: the thread lives as long as the process
    return *w;
  }

  // Runs job on the worker thread; returns when it has finished. Jobs run one at a time.
  void Run(const std::function<void()>& job) {
    std::lock_guard<std::mutex> call(call_mu_);
    std::unique_lock<std::mutex> lock(mu_);
    job_ = &job;
    done_ = false;
    cv_.notify_all();
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  Worker() {
    std::thread t([this] { Loop(); });
    pthread_setname_np(t.native_handle(), "fcdd_onednn");
    t.detach();
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return job_ != nullptr; });
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      job_ = nullptr;
      done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex call_mu_, mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  bool done_ = false;
};

// 1 (default): calls run on the Worker; 0: on the calling thread, one at a time (for A/B benchmarks).
inline int& ThreadMode() {
  static int mode = 1;
  return mode;
}

inline std::mutex& InlineMutex() {
  static std::mutex mu;
  return mu;
}

inline xla::ffi::Error Fail(const std::string& msg) {
  return xla::ffi::Error(xla::ffi::ErrorCode::kInternal, "fcdd_onednn: " + msg);
}

// Runs body() where the custom calls run (see above); its exceptions become FFI errors.
template <typename Body>
xla::ffi::Error Execute(Body&& body) {
  std::string err;
  std::function<void()> job = [&] {
    try {
      body();
    } catch (const std::exception& e) {
      err = e.what();
    }
  };
  if (ThreadMode()) {
    Worker::Get().Run(job);
  } else {
    std::lock_guard<std::mutex> lock(InlineMutex());
    job();
  }
  return err.empty() ? xla::ffi::Error::Success() : Fail(err);
}

}  // namespace fcdd_onednn

#endif  // FCDD_ONEDNN_RUNTIME_H_
