#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace airlock::sandbox {

namespace {

std::string why(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

bool write_file(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

// Makes `path` (and its parents) exist below `root` as the kind of thing `like` is.
bool make_mount_point(const std::string& root, const std::string& path, bool dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = fs::path(root) / fs::path(path).relative_path();
  fs::create_directories(dir ? target : target.parent_path(), ec);
  if (ec) return false;
  if (!dir) {
    int fd = open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0400);
    if (fd < 0) return false;
    close(fd);
  }
  return true;
}

// An empty root: a small tmpfs with only the readable paths bound in (read-only),
// pivoted to, the old root detached, the new one remounted read-only.
Status empty_root(const std::vector<std::string>& readable) {
  auto fail = [](const char* what) { return make_error(Code::PermissionDenied, why(what)); };
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return fail("make mounts private");
  const char* scratch = nullptr;  // an existing directory to mount the new root on (in our namespace only)
  for (const char* d : {"/tmp", "/mnt", "/run", "/dev"}) {
    struct stat st {};
    if (stat(d, &st) == 0 && S_ISDIR(st.st_mode)) {
      scratch = d;
      break;
    }
  }
  if (!scratch) return make_error(Code::PermissionDenied, "no directory to build the new root on");
  // Hold each readable path by an O_PATH descriptor first: the tmpfs mounted next may
  // hide it (a path under /tmp, say), and the bind below goes through /proc/self/fd.
  struct Source {
    std::string path;
    int fd;
    bool dir;
  };
  std::vector<Source> sources;
  auto close_sources = [&] {
    for (auto& src : sources) close(src.fd);
  };
  auto bail = [&](const char* what) {  // errno is read before the closes change it
    Status st = fail(what);
    close_sources();
    return st;
  };
  for (const auto& p : readable) {
    struct stat st {};
    int fd = p.empty() || p[0] != '/' ? -1 : open(p.c_str(), O_PATH | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
      if (fd >= 0) close(fd);
      close_sources();
      return make_error(Code::InvalidArgument, "readable path '" + p + "' is not an existing absolute path");
    }
    sources.push_back({p, fd, S_ISDIR(st.st_mode)});
  }
  if (mount("airlock", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=256k,mode=0755") != 0) {
    return bail("mount tmpfs");
  }
  for (const auto& src : sources) {
    const std::string target = std::string(scratch) + src.path;
    const std::string from = "/proc/self/fd/" + std::to_string(src.fd);
    if (!make_mount_point(scratch, src.path, src.dir)) return bail("mount point");
    if (mount(from.c_str(), target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) {
      return bail("bind a readable path");
    }
    if (mount(nullptr, target.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0) {
      return bail("make a readable path read-only");
    }
  }
  close_sources();
  const std::string old = std::string(scratch) + "/.old";
  if (mkdir(old.c_str(), 0700) != 0) return fail("mkdir .old");
  if (syscall(SYS_pivot_root, scratch, old.c_str()) != 0) return fail("pivot_root");
  if (chdir("/") != 0) return fail("chdir /");
  if (umount2("/.old", MNT_DETACH) != 0) return fail("detach the old root");
  rmdir("/.old");
  if (mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    return fail("remount the root read-only");
  }
  return ok_status();
}

Status drop_capabilities() {
  for (int cap = 0; cap <= 63; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return make_error(Code::PermissionDenied, why("drop bounding set"));
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2] = {};
  if (syscall(SYS_capset, &h, d) != 0) return make_error(Code::PermissionDenied, why("capset"));
  if (syscall(SYS_capget, &h, d) != 0 || d[0].effective || d[1].effective || d[0].permitted || d[1].permitted) {
    return make_error(Code::PermissionDenied, "capabilities are still held after capset");
  }
  return ok_status();
}

}  // namespace

std::string Report::summary() const {
  std::string s = "applied: ";
  for (size_t i = 0; i < applied.size(); ++i) s += (i ? "," : "") + applied[i];
  if (!missing.empty()) {
    s += "; missing: ";
    for (size_t i = 0; i < missing.size(); ++i) s += (i ? "; " : "") + missing[i];
  }
  return s;
}

Status enter(const Policy& p, Report& r) {
  if (!p.enabled) {
    r.missing.push_back("everything (the host turned the sandbox off)");
    return ok_status();
  }
  umask(077);
  if (geteuid() == 0 && p.uid != static_cast<uid_t>(-1)) {
    if (setgroups(0, nullptr) != 0 || setresgid(p.gid, p.gid, p.gid) != 0 || setresuid(p.uid, p.uid, p.uid) != 0) {
      return make_error(Code::PermissionDenied, why("switch to the configured user"));
    }
    r.applied.push_back("user " + std::to_string(p.uid));
  }
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  // A user namespace first: it makes the others possible without privileges, and every
  // capability held from here on is one of that namespace only.
  bool mountns = false;
  if (unshare(CLONE_NEWUSER) == 0) {
    write_file("/proc/self/setgroups", "deny");
    if (write_file("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") &&
        write_file("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1")) {
      r.applied.push_back("userns");
    } else {
      r.missing.push_back(why("userns id maps"));
    }
  } else {
    r.missing.push_back(why("userns"));
  }
  for (auto [flag, name] : {std::pair{CLONE_NEWNS, "mountns"}, std::pair{CLONE_NEWNET, "netns"},
                            std::pair{CLONE_NEWIPC, "ipcns"}, std::pair{CLONE_NEWUTS, "utsns"}}) {
    if (unshare(flag) == 0) {
      r.applied.push_back(name);
      if (flag == CLONE_NEWNS) mountns = true;
      if (flag == CLONE_NEWUTS) sethostname("airlock", 7);
    } else {
      r.missing.push_back(why(name));
    }
  }
  if (mountns) {
    if (auto st = empty_root(p.readable); st.ok()) {
      r.applied.push_back("empty-root");
    } else if (st.error().code == Code::InvalidArgument) {
      return st;
    } else {
      r.missing.push_back("empty-root: " + st.error().message);
    }
  } else {
    r.missing.push_back("empty-root: no mount namespace");
  }
  if (chdir("/") != 0) return make_error(Code::Internal, why("chdir /"));
  rlimit core{0, 0};
  setrlimit(RLIMIT_CORE, &core);
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = std::min<rlim_t>(files.rlim_cur, p.max_open_files);
  files.rlim_max = std::min<rlim_t>(files.rlim_max, p.max_open_files);
  if (files.rlim_cur > files.rlim_max) files.rlim_cur = files.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &files) == 0) r.applied.push_back("rlimits");
  if (auto st = drop_capabilities(); st.ok()) {
    r.applied.push_back("caps");
  } else {
    r.missing.push_back("caps: " + st.error().message);
  }
  return ok_status();
}

}  // namespace airlock::sandbox
