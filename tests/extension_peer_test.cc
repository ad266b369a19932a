// airlock-extension faced with a raw peer instead of the host library: forged shared-
// memory refs are refused per request, and a malformed or oversized frame makes it
// disconnect and exit cleanly (never crash).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "airlock/msgpack_codec.h"
#include "airlock/shm/buffer.h"
#include "airlock/shm/fd_channel.h"

using namespace airlock;
using ::testing::HasSubstr;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class RawPeer {
 public:
  RawPeer() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    auto side = shm::FdChannel::pair();
    EXPECT_TRUE(side.ok());
    side_ = std::move(side->first);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    posix_spawn_file_actions_adddup2(&fa, side->second.fd(), 4);
    std::string bin = AIRLOCK_EXTENSION_BIN;
    std::vector<std::string> args = {bin, "--log-level", "off", "serve", "--fd", "3", "--side-fd", "4", "--name", "peer"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    char* envp[] = {nullptr};
    EXPECT_EQ(posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), envp), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    sock_ = sv[0];
    auto ready = next();
    EXPECT_TRUE(std::holds_alternative<proto::Ready>(ready));
  }
  ~RawPeer() {
    close(sock_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  void send(const proto::Frame& f) {
    std::string out;
    ASSERT_TRUE(proto::encode_msgpack(f, out).ok());
    write_raw(out);
  }
  void write_raw(const std::string& bytes) { ASSERT_EQ(write(sock_, bytes.data(), bytes.size()), ssize_t(bytes.size())); }
  proto::Frame next() {
    for (;;) {
      if (auto f = dec_.next()) return std::move(f->value());
      pollfd p{sock_, POLLIN, 0};
      if (poll(&p, 1, 5000) != 1) return proto::Shutdown{};
      char buf[65536];
      ssize_t n = read(sock_, buf, sizeof buf);
      if (n <= 0) return proto::Shutdown{};
      dec_.feed(buf, static_cast<size_t>(n));
    }
  }
  proto::Response response() {
    for (;;) {
      auto f = next();
      if (auto* r = std::get_if<proto::Response>(&f)) return *r;
      if (std::holds_alternative<proto::Shutdown>(f)) {
        proto::Response gone;
        gone.code = Code::Unavailable;
        return gone;
      }
    }
  }
  // Waits for the process to end; returns its wait status.
  int wait_exit(int ms) {
    for (int i = 0; i < ms / 10; ++i) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return st;
      }
      usleep(10'000);
    }
    return -1;
  }
  shm::FdChannel side_;

 private:
  pid_t pid_ = -1;
  int sock_ = -1;
  proto::MsgpackDecoder dec_;
};

TEST(ExtensionPeer, ForgedAndOutOfRangeSharedRefsAreInvalidArgument) {
  RawPeer peer;
  proto::LoadSkill load;
  load.id = 1;
  load.name = "echo";
  load.wasm = read_file(std::string(AIRLOCK_SKILL_DIR) + "/echo.wasm");
  peer.send(load);
  ASSERT_EQ(peer.response().code, Code::Ok);

  proto::Request forged;
  forged.id = 2;
  forged.target = "echo";
  forged.shm_refs = {{999, 0, 8}};
  peer.send(forged);
  auto r = peer.response();
  EXPECT_EQ(r.code, Code::InvalidArgument);
  EXPECT_THAT(r.error, HasSubstr("unknown"));

  auto buf = shm::Buffer::create(4096, "peer-test");
  ASSERT_TRUE(buf.ok());
  std::memset(buf->writable().data(), 'z', 4096);
  ASSERT_TRUE(buf->seal().ok());
  ASSERT_TRUE(peer.side_.announce(buf->id(), buf->fd(), buf->size()).ok());
  proto::Request oob;
  oob.id = 3;
  oob.target = "echo";
  oob.shm_refs = {{buf->id(), 4000, 200}};
  peer.send(oob);
  r = peer.response();
  EXPECT_EQ(r.code, Code::InvalidArgument);
  EXPECT_THAT(r.error, HasSubstr("outside"));
  proto::Request wrap = oob;
  wrap.id = 4;
  wrap.shm_refs = {{buf->id(), UINT64_MAX, 2}};
  peer.send(wrap);
  EXPECT_EQ(peer.response().code, Code::InvalidArgument);

  proto::Request good = oob;
  good.id = 5;
  good.shm_refs = {{buf->id(), 10, 3}};
  peer.send(good);
  r = peer.response();
  EXPECT_EQ(r.code, Code::Ok) << r.error;
  EXPECT_EQ(r.payload, "zzz");
}

TEST(ExtensionPeer, MalformedFrameEndsTheExtensionCleanly) {
  RawPeer peer;
  peer.write_raw(std::string("\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1", 9));
  int st = peer.wait_exit(2000);
  ASSERT_NE(st, -1) << "still running after a malformed frame";
  EXPECT_TRUE(WIFEXITED(st)) << "ended by a signal: " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

TEST(ExtensionPeer, OversizedFrameEndsTheExtensionCleanly) {
  RawPeer peer;
  peer.write_raw(std::string("\xff\xff\xff\x7f", 4));
  int st = peer.wait_exit(2000);
  ASSERT_NE(st, -1);
  EXPECT_TRUE(WIFEXITED(st));
}

}  // namespace
