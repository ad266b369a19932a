// cxx_features (C++, for sdk_test): a global object with a constructor (run by
// _initialize), virtual dispatch, std::function and templates; `at` indexes a vector
// with .at(), which without exceptions aborts (the call traps) when out of range.
// CXX_FEATURES_TAG comes from airlock_add_skill(... COMPILE_OPTIONS -DCXX_FEATURES_TAG=7).
#include <airlock/skill.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Shape {
  virtual ~Shape() = default;
  virtual int area() const = 0;
};
struct Square : Shape {
  explicit Square(int s) : side(s) {}
  int area() const override { return side * side; }
  int side;
};

const std::vector<std::string> kNames = {"zero", "one", "two"};  // built by _initialize

template <class T>
T twice(T v) { return v + v; }

}  // namespace

AIRLOCK_SKILL(run) {
  std::unique_ptr<Shape> s = std::make_unique<Square>(static_cast<int>(input_len));
  std::function<int(int)> f = [](int x) { return twice(x) + 1; };
  std::string out = kNames.at(input_len % kNames.size()) + " " + std::to_string(s->area()) + " " +
                    std::to_string(f(s->area())) + " " + twice(std::string("ab")) + " " +
                    std::to_string(CXX_FEATURES_TAG);
  airlock_output(out.data(), out.size());
  return AIRLOCK_OK;
}

AIRLOCK_SKILL(at) {
  std::string r = kNames.at(input_len);  // input of 3+ bytes: out of range
  airlock_output(r.data(), r.size());
  return AIRLOCK_OK;
}
