// The OS sandbox, checked from outside (docs/SECURITY.md): what /proc says of a running
// extension, on both start paths (zygote fork and exec), and what happens when code
// injected into it (sandbox_escape.c, the stand-in for an exploited V8) tries to get out.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "airlock/host.h"

using namespace airlock;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

std::string skill(const std::string& n) { return std::string(AIRLOCK_SKILL_DIR) + "/" + n + ".wasm"; }

std::map<std::string, std::string> proc_status(int pid) {
  std::map<std::string, std::string> m;
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    auto c = line.find(':');
    if (c == std::string::npos) continue;
    auto v = line.substr(c + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    m[line.substr(0, c)] = v;
  }
  return m;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string ns_of(const std::string& pid, const char* ns) {
  std::error_code ec;
  return fs::read_symlink("/proc/" + pid + "/ns/" + ns, ec).string();
}

HostOptions host_options(bool zygote) {
  HostOptions o;
  o.extension_binary = AIRLOCK_EXTENSION_BIN;
  o.use_zygote = zygote;
  return o;
}

class SandboxProbe : public ::testing::TestWithParam<bool> {};

TEST_P(SandboxProbe, ARunningExtensionIsConfined) {
  // A descriptor of the host's that is not close-on-exec: it must not reach the extension.
  const std::string secret = (fs::temp_directory_path() / ("airlock-secret-" + std::to_string(getpid()))).string();
  { std::ofstream(secret) << "the host's secret"; }
  const int leak = open(secret.c_str(), O_RDONLY);  // no O_CLOEXEC, on purpose
  ASSERT_GE(leak, 0);

  Host h(host_options(GetParam()));
  ExtensionOptions eo;
  eo.name = "probe";
  eo.env = {"DECLARED=1"};
  // A declared folder under /tmp: the sandbox builds its new root on /tmp, which must not
  // hide what it binds from there.
  const fs::path shared_dir = fs::temp_directory_path() / ("airlock-readable-" + std::to_string(getpid()));
  fs::create_directories(shared_dir);
  { std::ofstream(shared_dir / "data.txt") << "declared"; }
  eo.readable = {AIRLOCK_SKILL_DIR, shared_dir.string()};
  auto ext = h.spawn(eo);
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  ASSERT_TRUE(ext->load_skill("echo", skill("echo")).ok());
  ASSERT_EQ(*ext->call("echo", "confined"), "confined");  // it still works, under all of it
  const std::string report = ext->sandbox_report();
  SCOPED_TRACE("sandbox report: " + report);
  std::cout << "sandbox report: " << report << "\n";
  const std::string pid = std::to_string(ext->pid());

  auto st = proc_status(ext->pid());
  EXPECT_EQ(st["Seccomp"], "2") << "seccomp filter mode";
  EXPECT_EQ(st["NoNewPrivs"], "1");
  EXPECT_EQ(st["CapEff"], "0000000000000000");
  EXPECT_EQ(st["CapPrm"], "0000000000000000");
  EXPECT_EQ(st["CapBnd"], "0000000000000000");
  EXPECT_EQ(st["CapAmb"], "0000000000000000");

  // Every namespace the report claims is really another one than the host's.
  for (auto [name, ns] : {std::pair{"userns", "user"}, std::pair{"mountns", "mnt"}, std::pair{"netns", "net"},
                          std::pair{"ipcns", "ipc"}, std::pair{"utsns", "uts"}}) {
    if (report.find(name) == std::string::npos || report.find(std::string(name) + ":") != std::string::npos) continue;
    EXPECT_NE(ns_of(pid, ns), ns_of("self", ns)) << name;
  }
  EXPECT_THAT(report, HasSubstr("seccomp"));
  EXPECT_THAT(report, HasSubstr("caps"));

  // Descriptors: the channel, the side channel and what it opened itself; nothing of ours.
  for (const auto& fd : fs::directory_iterator("/proc/" + pid + "/fd")) {
    std::error_code ec;
    const auto target = fs::read_symlink(fd.path(), ec).string();
    EXPECT_EQ(target.find("airlock-secret"), std::string::npos) << "fd " << fd.path().filename() << " -> " << target;
  }
  // Only the declared environment.
  const std::string env = read_all("/proc/" + pid + "/environ");
  EXPECT_EQ(env, std::string("DECLARED=1") + '\0');

  if (report.find("empty-root") != std::string::npos && report.find("empty-root:") == std::string::npos) {
    // Its root holds only what was declared readable (and the mount points leading to it).
    const std::string root = "/proc/" + pid + "/root";
    EXPECT_FALSE(fs::exists(root + "/etc/passwd"));
    EXPECT_FALSE(fs::exists(root + "/tmp/" + fs::path(secret).filename().string()));
    EXPECT_FALSE(fs::exists(root + "/proc/self"));
    EXPECT_TRUE(fs::exists(root + skill("echo")));
    EXPECT_EQ(read_all(root + (shared_dir / "data.txt").string()), "declared");
  }
  if (report.find("netns") != std::string::npos && report.find("netns:") == std::string::npos) {
    // No interface but loopback.
    std::istringstream dev(read_all("/proc/" + pid + "/net/dev"));
    std::string line;
    std::getline(dev, line);
    std::getline(dev, line);
    std::vector<std::string> ifaces;
    while (std::getline(dev, line)) ifaces.push_back(line.substr(0, line.find(':')));
    for (auto& i : ifaces) i.erase(0, i.find_first_not_of(' '));
    EXPECT_THAT(ifaces, ::testing::ElementsAre("lo"));
  }
  close(leak);
  fs::remove(secret);
  fs::remove_all(shared_dir);
}

INSTANTIATE_TEST_SUITE_P(StartPaths, SandboxProbe, ::testing::Values(true, false),
                         [](const auto& i) { return i.param ? "zygote" : "exec"; });

// Code injected into the extension: the exec path, so that LD_PRELOAD takes effect.
Result<Extension> spawn_exploited(Host& h, const std::string& what) {
  ExtensionOptions eo;
  eo.name = "exploited";
  eo.env = {"LD_PRELOAD=" AIRLOCK_SANDBOX_ESCAPE_LIB, "AIRLOCK_ESCAPE=" + what};
  return h.spawn(eo);
}

TEST(SandboxEscape, WhatAnAttackerTriesFirstFailsAndTheExtensionKeepsServing) {
  Host h(host_options(false));
  auto ext = spawn_exploited(h, "probe");  // aborts if any attempt works
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  ASSERT_TRUE(ext->load_skill("echo", skill("echo")).ok());
  EXPECT_EQ(*ext->call("echo", "still here"), "still here");
  // The probe ran (its loop thread renamed itself once every attempt had failed).
  const std::string pid = std::to_string(ext->pid());
  EXPECT_EQ(read_all("/proc/" + pid + "/task/" + pid + "/comm"), "probed\n");
}

class SandboxKill : public ::testing::TestWithParam<std::string> {};

TEST_P(SandboxKill, TheHostNamesTheCallTheSandboxKilledFor) {
  Host h(host_options(false));
  auto ext = spawn_exploited(h, GetParam());
  // It dies as soon as its loop starts: before or just after Ready reached the host.
  std::string error;
  if (!ext.ok()) {
    error = ext.error().message;
  } else {
    auto r = ext->call("echo", "x");
    ASSERT_FALSE(r.ok());
    error = r.error().message;
    if (r.error().code != Code::ExtensionCrashed) {
      // The call may have been refused first (no skill): the exit is reported by then.
      auto again = ext->call("echo", "x");
      error = again.ok() ? "" : again.error().message;
    }
  }
  EXPECT_THAT(error, HasSubstr("exploited"));
  EXPECT_THAT(error, HasSubstr("was killed by the sandbox: syscall " + GetParam()));
  // The host is fine: another extension spawns and serves.
  ExtensionOptions eo;
  eo.name = "next";
  auto next = h.spawn(eo);
  ASSERT_TRUE(next.ok()) << next.error().to_string();
  ASSERT_TRUE(next->load_skill("echo", skill("echo")).ok());
  EXPECT_EQ(*next->call("echo", "fine"), "fine");
}

INSTANTIATE_TEST_SUITE_P(Calls, SandboxKill, ::testing::Values("execve", "ptrace", "fork", "process_vm_readv"),
                         [](const auto& i) { return i.param; });

TEST(SandboxOff, TheReportSaysSoAndNothingIsFiltered) {
  HostOptions o = host_options(true);
  o.sandbox.enabled = false;
  Host h(o);
  ExtensionOptions eo;
  eo.name = "open";
  auto ext = h.spawn(eo);
  ASSERT_TRUE(ext.ok()) << ext.error().to_string();
  EXPECT_THAT(ext->sandbox_report(), HasSubstr("missing: everything"));
  EXPECT_EQ(proc_status(ext->pid())["Seccomp"], "0");
}

}  // namespace
