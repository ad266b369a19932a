// A channel carries frames between a host and one extension over the socket the host
// created before spawning it. Two implementations, one per encoding:
//   msgpack: length-prefixed msgpack frames on the socket, driven by libuv;
//   gRPC:    one bidi stream (Extension.Session) over the same socket, the host as the
//            client and the extension as the server (no listening socket, no path).
// Whatever the encoding, the rest of Airlock sees only this interface.
//
// Threading: create, use and destroy a channel on its libuv loop's thread; callbacks
// run on that thread. The exceptions are direct_sender() (frames written from another
// thread, so that a caller's request need not wait for the loop thread to wake up) and
// direct_reader() (a waiting caller reading its own answer).
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>

#include "airlock/frame.h"
#include "airlock/status.h"

namespace airlock::proto {

struct RingLink;  // ring.h

enum class Encoding : uint8_t { Msgpack, Grpc };
std::string_view to_string(Encoding e);
Result<Encoding> parse_encoding(std::string_view s);  // "msgpack" | "grpc"

enum class Role : uint8_t { Host, Extension };  // gRPC: client or server side of the stream

struct ChannelCallbacks {
  std::function<void(Frame&&)> on_frame;
  // The peer went away or sent something unacceptable (malformed/oversized frame):
  // the channel is closed and the error says why. Not called after close().
  std::function<void(const Error&)> on_closed;
  // Optional: runs on the thread that read a frame when that is not the loop's (a
  // DirectReader's leader; gRPC's completion-queue thread), while no earlier frame waits
  // for the loop, so order is kept. True: it consumed the frame, which then never reaches
  // on_frame; the loop thread is not woken for it. It must not call into the channel.
  std::function<bool(Frame&)> take;
};

// Writes frames from any thread, straight to the socket, beside the loop's own writes
// (one lock: frames never interleave). Returned by Channel::direct_sender(); it may
// outlive its channel, and then refuses everything.
class DirectSender {
 public:
  virtual ~DirectSender() = default;
  // True: the frame is committed, written whole or its tail queued for the loop thread
  // to finish. False: nothing of it was written (the channel is closed, the frame is too
  // large, or the queue is full): send it through the loop, which reports why.
  virtual bool try_send(const Frame& frame) = 0;
  // Bytes written to the channel and not yet to the socket, now (any thread).
  virtual size_t queued_bytes() const = 0;
};

// Lets a thread that waits for an answer read the socket itself while it waits
// ("leader/follower"), so that the answer wakes that thread and nothing else: the loop
// thread is neither woken to read it nor to hand it over. Returned by
// Channel::direct_reader(); it may outlive its channel, and then leads nothing.
class DirectReader {
 public:
  virtual ~DirectReader() = default;
  // Reads frames on the calling thread until finished() is true, `until` passes, the
  // channel closes, or a frame arrives that ChannelCallbacks::take does not consume: that
  // frame and every one after it go to the loop thread, in order, and this returns.
  // Returns at once if another thread leads or the loop has frames to handle first.
  // True if it handed frames to the loop.
  virtual bool lead(const std::function<bool()>& finished, std::chrono::steady_clock::time_point until) = 0;
  // [loop thread] Makes the leader, if any, look at finished() again (the loop ended
  // its call: a timeout, a failure).
  virtual void interrupt() = 0;
};

class Channel {
 public:
  virtual ~Channel() = default;
  virtual void start(ChannelCallbacks callbacks) = 0;
  // Queues a frame. ResourceExhausted (nothing sent) if it exceeds the maximum frame
  // size, or if max_queued bytes already wait for a peer that is not reading (a frame
  // is always taken when nothing waits); Unavailable if the channel is closed.
  virtual Status send(const Frame& frame) = 0;
  // Encoded bytes accepted by send() and not yet handed to the socket.
  virtual size_t queued_bytes() const = 0;
  // Stops reading and writing and releases the socket; idempotent.
  virtual void close() = 0;
  virtual Encoding encoding() const = 0;
  // The channel's DirectSender (loop thread); null once closed.
  virtual std::shared_ptr<DirectSender> direct_sender() { return nullptr; }
  // The channel's DirectReader (loop thread); null once closed, or where the encoding
  // has none (gRPC: its library reads the socket).
  virtual std::shared_ptr<DirectReader> direct_reader() { return nullptr; }
};

// Sends an answer; if the channel refuses it (too large for a frame), sends a small
// Response with the reason instead, so the requester is never left waiting.
void send_response(Channel& channel, const Response& response);

// What may wait in a channel for a peer that does not read: 256 MiB.
constexpr size_t kDefaultMaxQueuedBytes = size_t(256) << 20;

// Takes ownership of `fd` (a connected AF_UNIX stream socket). `spin_us` (msgpack):
// after the loop handled or sent a frame, it keeps polling without sleeping this long,
// so that an answer from a peer on another CPU is read at once instead of after a
// wake-up (~50 µs across vCPUs of a VM); 0: it sleeps at once. `ring` (msgpack): the
// frames travel in this shared-memory ring pair instead of the socket, which then
// carries only doorbell bytes (sent when the peer said it sleeps) and the hang-up; both
// ends must be given the same pair (ring.h). A polling reader needs no doorbell, so
// with `spin_us` a frame costs no syscall on either side.
std::unique_ptr<Channel> make_channel(Encoding enc, Role role, uv_loop_t* loop, int fd,
                                      uint32_t max_frame = kDefaultMaxFrameBytes,
                                      size_t max_queued = kDefaultMaxQueuedBytes, uint32_t spin_us = 0,
                                      std::shared_ptr<RingLink> ring = nullptr);

// The error send() returns when a peer has stopped reading.
Error queue_full_error(size_t queued, size_t max_queued);

}  // namespace airlock::proto
