// A one-shot libuv timer that frees itself: uv handles close asynchronously, so the
// handle is deleted in its close callback. Used on a loop's own thread only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>

namespace airlock {

struct LoopTimer {
  uv_timer_t handle;
  std::function<void()> fn;

  static LoopTimer* start(uv_loop_t* loop, uint64_t ms, std::function<void()> fn) {
    auto* t = new LoopTimer{{}, std::move(fn)};
    uv_timer_init(loop, &t->handle);
    t->handle.data = t;
    uv_update_time(loop);  // the loop's cached "now" may be a whole callback old
    uv_timer_start(&t->handle, [](uv_timer_t* h) { static_cast<LoopTimer*>(h->data)->fn(); }, ms, 0);
    return t;
  }

  // Safe on nullptr and from inside the timer's own callback; sets t to nullptr.
  static void stop(LoopTimer*& t) {
    if (!t) return;
    uv_timer_stop(&t->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&t->handle), [](uv_handle_t* h) { delete static_cast<LoopTimer*>(h->data); });
    t = nullptr;
  }
};

}  // namespace airlock
