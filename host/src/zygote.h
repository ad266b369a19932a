// The host's end of the zygote (see extension/cli/zygote.h): one pre-loaded
// airlock-extension per Host that forks new extensions in a few ms instead of the
// tens of ms an exec + dynamic load of libnode costs. Used from the I/O thread only.
#pragma once

#include <string>
#include <vector>

#include "process.h"

namespace airlock::detail {

class Zygote {
 public:
  explicit Zygote(std::string binary) : binary_(std::move(binary)) {}
  ~Zygote();
  Zygote(const Zygote&) = delete;
  Zygote& operator=(const Zygote&) = delete;

  // Starts the zygote on first use. An error means: use spawn_child() instead.
  Result<ChildProcess> spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, int side_fd);

 private:
  Status start();
  void stop();
  std::string binary_;
  pid_t pid_ = -1;
  int sock_ = -1;
};

}  // namespace airlock::detail
