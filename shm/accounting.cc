#include "airlock/shm/accounting.h"

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace airlock::shm {
namespace {
std::atomic<int64_t> g_buffers{0}, g_buffer_bytes{0}, g_mappings{0}, g_mapping_bytes{0};
}  // namespace

namespace detail {
void count_buffer(int64_t dc, int64_t db) {
  g_buffers += dc;
  g_buffer_bytes += db;
}
void count_mapping(int64_t dc, int64_t db) {
  g_mappings += dc;
  g_mapping_bytes += db;
}
}  // namespace detail

Stats stats() {
  return Stats{static_cast<uint64_t>(g_buffers.load()), static_cast<uint64_t>(g_buffer_bytes.load()),
               static_cast<uint64_t>(g_mappings.load()), static_cast<uint64_t>(g_mapping_bytes.load())};
}

Result<size_t> count_open_memfds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    return make_error(Code::Internal, std::string("opendir /proc/self/fd: ") + std::strerror(errno));
  const int own = ::dirfd(dir);  // the directory's own fd shows up in its listing
  size_t n = 0;
  while (dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == own) continue;
    char target[256];
    ssize_t len = ::readlinkat(own, e->d_name, target, sizeof target);
    if (len > 0 && std::string_view(target, static_cast<size_t>(len)).starts_with("/memfd:")) ++n;
  }
  ::closedir(dir);
  return n;
}

}  // namespace airlock::shm
