/* wasi_all: calls every WASI preview 1 function wasi-libc declares (wasi/api.h) directly,
 * on fd 3 (which never exists) and where it makes sense on a stdio fd, and outputs one
 * line "name fd=errno" per call. sdk_test checks each answer: every import links and
 * refuses cleanly with a WASI errno, none traps. */
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#include <airlock/skill.h>

static char out[4096];
static size_t used;

static void put(const char* name, int fd, int err) {
  int n = snprintf(out + used, sizeof out - used, "%s %d=%d\n", name, fd, err);
  if (n > 0 && (size_t)n < sizeof out - used) used += (size_t)n;
}

AIRLOCK_SKILL(run) {
  used = 0;
  uint8_t buf[64];
  __wasi_size_t sz = 0;
  __wasi_filesize_t pos = 0;
  __wasi_fd_t newfd = 0;
  __wasi_iovec_t iov = {buf, sizeof buf};
  __wasi_ciovec_t ciov = {buf, 1};
  __wasi_filestat_t fst;
  __wasi_fdstat_t fdst;
  __wasi_prestat_t pre;
  __wasi_roflags_t roflags;
  for (int fd = 1; fd <= 3; fd += 2) { /* 1: stdout, 3: nothing */
    put("fd_advise", fd, __wasi_fd_advise(fd, 0, 10, __WASI_ADVICE_NORMAL));
    put("fd_allocate", fd, __wasi_fd_allocate(fd, 0, 10));
    put("fd_datasync", fd, __wasi_fd_datasync(fd));
    put("fd_fdstat_get", fd, __wasi_fd_fdstat_get(fd, &fdst));
    put("fd_fdstat_set_flags", fd, __wasi_fd_fdstat_set_flags(fd, __WASI_FDFLAGS_APPEND));
    put("fd_fdstat_set_rights", fd, __wasi_fd_fdstat_set_rights(fd, 0, 0));
    put("fd_filestat_get", fd, __wasi_fd_filestat_get(fd, &fst));
    put("fd_filestat_set_size", fd, __wasi_fd_filestat_set_size(fd, 0));
    put("fd_filestat_set_times", fd, __wasi_fd_filestat_set_times(fd, 0, 0, 0));
    put("fd_pread", fd, __wasi_fd_pread(fd, &iov, 1, 0, &sz));
    put("fd_prestat_get", fd, __wasi_fd_prestat_get(fd, &pre));
    put("fd_prestat_dir_name", fd, __wasi_fd_prestat_dir_name(fd, buf, sizeof buf));
    put("fd_pwrite", fd, __wasi_fd_pwrite(fd, &ciov, 1, 0, &sz));
    put("fd_readdir", fd, __wasi_fd_readdir(fd, buf, sizeof buf, 0, &sz));
    put("fd_renumber", fd, __wasi_fd_renumber(fd, 7));
    put("fd_seek", fd, __wasi_fd_seek(fd, 0, __WASI_WHENCE_CUR, &pos));
    put("fd_sync", fd, __wasi_fd_sync(fd));
    put("fd_tell", fd, __wasi_fd_tell(fd, &pos));
    put("path_create_directory", fd, __wasi_path_create_directory(fd, "d"));
    put("path_filestat_get", fd, __wasi_path_filestat_get(fd, 0, "f", &fst));
    put("path_filestat_set_times", fd, __wasi_path_filestat_set_times(fd, 0, "f", 0, 0, 0));
    put("path_link", fd, __wasi_path_link(fd, 0, "a", fd, "b"));
    put("path_open", fd, __wasi_path_open(fd, 0, "f", __WASI_OFLAGS_CREAT, ~0ull, ~0ull, 0, &newfd));
    put("path_readlink", fd, __wasi_path_readlink(fd, "l", buf, sizeof buf, &sz));
    put("path_remove_directory", fd, __wasi_path_remove_directory(fd, "d"));
    put("path_rename", fd, __wasi_path_rename(fd, "a", fd, "b"));
    put("path_symlink", fd, __wasi_path_symlink("a", fd, "b"));
    put("path_unlink_file", fd, __wasi_path_unlink_file(fd, "f"));
    put("sock_accept", fd, __wasi_sock_accept(fd, 0, &newfd));
    put("sock_recv", fd, __wasi_sock_recv(fd, &iov, 1, 0, &sz, &roflags));
    put("sock_send", fd, __wasi_sock_send(fd, &ciov, 1, 0, &sz));
    put("sock_shutdown", fd, __wasi_sock_shutdown(fd, __WASI_SDFLAGS_RD));
    put("fd_close", fd + 2, __wasi_fd_close(fd + 2)); /* 3 and 5: never open */
  }
  put("fd_read", 0, __wasi_fd_read(0, &iov, 1, &sz));
  put("fd_read", 3, __wasi_fd_read(3, &iov, 1, &sz));
  put("fd_write", 3, __wasi_fd_write(3, &ciov, 1, &sz));
  __wasi_timestamp_t t = 0;
  put("clock_time_get", 1, __wasi_clock_time_get(__WASI_CLOCKID_MONOTONIC, 1, &t));
  put("clock_time_get", 9, __wasi_clock_time_get(9, 1, &t));
  put("clock_res_get", 0, __wasi_clock_res_get(__WASI_CLOCKID_REALTIME, &t));
  put("random_get", 0, __wasi_random_get(buf, sizeof buf));
  put("sched_yield", 0, __wasi_sched_yield());
  put("args_sizes_get", 0, __wasi_args_sizes_get(&sz, &sz));
  put("environ_sizes_get", 0, __wasi_environ_sizes_get(&sz, &sz));

  /* poll_oneoff: a clock 1 s ahead would block: refused; with stdout writable: ready. */
  __wasi_subscription_t subs[2];
  __wasi_event_t evs[2];
  memset(subs, 0, sizeof subs);
  subs[0].userdata = 1;
  subs[0].u.tag = __WASI_EVENTTYPE_CLOCK;
  subs[0].u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
  subs[0].u.u.clock.timeout = 1000000000ull;
  put("poll_oneoff_sleep", 0, __wasi_poll_oneoff(subs, evs, 1, &sz));
  subs[1].userdata = 2;
  subs[1].u.tag = __WASI_EVENTTYPE_FD_WRITE;
  subs[1].u.u.fd_write.file_descriptor = 1;
  sz = 0;
  int e = __wasi_poll_oneoff(subs, evs, 2, &sz);
  put("poll_oneoff_write", (int)sz, e == 0 && sz == 1 && evs[0].userdata == 2 ? 0 : 1000 + e);
  put("poll_oneoff_many", 0, __wasi_poll_oneoff(subs, evs, 100000, &sz)); /* over the bound */
  airlock_output(out, used);
  return AIRLOCK_OK;
}

/* poll_oob: poll_oneoff with arrays past the end of linear memory: the call traps with
 * InvalidArgument (nothing is written, nothing is read out of bounds). */
AIRLOCK_SKILL(poll_oob) {
  __wasi_size_t n = 0;
  __wasi_subscription_t* in = (__wasi_subscription_t*)(uintptr_t)0xFFFFFF00u;
  return (int32_t)__wasi_poll_oneoff(in, (__wasi_event_t*)in, 2, &n);
}
