// Memory of a process and all its descendants (host + zygote + extensions), from
// /proc/PID/smaps_rollup: RSS counts a shared page once per process, PSS splits it
// among its users (the honest figure for a tree that shares libnode's pages).
#pragma once

#include <sys/types.h>

#include <vector>

namespace airlock::ctl {

struct TreeMemory {
  long rss_kb = 0;
  long pss_kb = 0;
  int processes = 0;     // in the tree
  int unreadable = 0;    // whose smaps_rollup could not be read (not ours to read, or gone)
  double cpu_ms = 0;     // user + system CPU time of the tree (all threads, and reaped children)
};

std::vector<pid_t> process_tree(pid_t root);  // root first, then every descendant
TreeMemory tree_memory(pid_t root);

}  // namespace airlock::ctl
