// The host's end of the zygote (extension/cli/zygote.h): one pre-loaded
// airlock-extension per Host that forks new extensions in a few ms instead of the
// tens of ms an exec + dynamic load of libnode costs.
//
// The zygote is as untrusted as any extension. Its messages are read on the loop
// (uv_poll, never a blocking wait on the I/O thread), checked against the wire format
// (proto/include/airlock/zygote_wire.h) and against the one state they may arrive in;
// the child it forks comes back as a pidfd that adopt_child() must accept. Anything
// else (a bad hello or reply, silence past a deadline, a pidfd that is not our child,
// death) gets the zygote killed through its own pidfd and the spawn goes on with exec,
// after one warning. A failed zygote is started afresh on a later spawn, at most
// kMaxFailures times per Host.
//
// Loop thread only.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "airlock/loop_timer.h"
#include "process.h"

namespace airlock::detail {

class Zygote {
 public:
  using Done = std::function<void(Result<ChildProcess>)>;
  // `is_known` says whether a pid already belongs to one of the host's extensions (a
  // zygote handing back another extension's pidfd is lying).
  Zygote(uv_loop_t* loop, std::string binary, std::function<bool(pid_t)> is_known);
  ~Zygote();
  Zygote(const Zygote&) = delete;
  Zygote& operator=(const Zygote&) = delete;

  // Asks for a forked extension. false: the zygote cannot take it now (starting, or
  // given up): exec instead. true: `done` runs later with the child or an error (then
  // exec too). The zygote is started on the first call.
  bool spawn(std::vector<std::string> argv, std::vector<std::string> env, int side_fd, Done done);

  static constexpr int kMaxFailures = 3;
  static constexpr uint64_t kHelloTimeoutMs = 30'000;  // a cold page cache: ~0.5 s
  static constexpr uint64_t kReplyTimeoutMs = 2'000;   // a fork takes ~1 ms

 private:
  enum class State { Off, Starting, Ready, Busy, Disabled };
  struct Pending {
    std::vector<std::string> argv, env;
    int side_fd = -1;  // ours (dup), closed once sent
    Done done;
  };
  void start();
  void send_next();
  void on_readable();
  void on_reply(const std::string& bytes, std::vector<int>& fds);
  void fail(const std::string& why);  // kills the zygote; pending spawns fail (-> exec)
  void drain_late_replies();
  void close_handles();

  uv_loop_t* loop_;
  std::string binary_;
  std::function<bool(pid_t)> is_known_;
  State state_ = State::Off;
  int failures_ = 0;
  ChildProcess proc_;  // the zygote; host_fd is its socket
  uv_poll_t* sock_watch_ = nullptr;
  uv_poll_t* exit_watch_ = nullptr;
  LoopTimer* timer_ = nullptr;
  std::deque<Pending> queue_;
  // The request in flight.
  uint64_t seq_ = 0;
  uint64_t inode_ = 0;  // of the child's end of its channel: the proof of adopt_child()
  int in_flight_host_fd_ = -1;
  Done in_flight_done_;
};

}  // namespace airlock::detail
