#include "metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/text_serializer.h>

#include <exception>

namespace airlock::detail {

namespace {

prometheus::MetricFamily family(const char* name, const char* help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

prometheus::ClientMetric metric(const ExtensionStats& s, std::vector<prometheus::ClientMetric::Label> more = {}) {
  prometheus::ClientMetric m;
  m.label.push_back({"extension", s.name});  // the serializer escapes quotes and backslashes
  for (auto& l : more) m.label.push_back(std::move(l));
  return m;
}

class StatsCollectable final : public prometheus::Collectable {
 public:
  explicit StatsCollectable(MetricsEndpoint::StatsFn fn) : fn_(std::move(fn)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return metric_families(fn_()); }

 private:
  MetricsEndpoint::StatsFn fn_;
};

}  // namespace

std::vector<prometheus::MetricFamily> metric_families(const std::vector<ExtensionStats>& all) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto per_extension = [&](const char* name, const char* help, MetricType type, auto value) {
    auto f = family(name, help, type);
    for (const auto& s : all) {
      auto m = metric(s);
      (type == MetricType::Counter ? m.counter.value : m.gauge.value) = static_cast<double>(value(s));
      f.metric.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  };
  per_extension("airlock_calls_total", "Calls to the extension that have ended", MetricType::Counter,
                [](const ExtensionStats& s) { return s.calls; });
  {
    auto f = family("airlock_call_errors_total", "Calls that ended with an error, by code", MetricType::Counter);
    for (const auto& s : all) {
      for (const auto& [code, n] : s.errors) {
        auto m = metric(s, {{"code", code}});
        m.counter.value = static_cast<double>(n);
        f.metric.push_back(std::move(m));
      }
    }
    out.push_back(std::move(f));
  }
  per_extension("airlock_calls_in_flight", "Calls sent and not yet ended", MetricType::Gauge,
                [](const ExtensionStats& s) { return s.in_flight; });
  per_extension("airlock_restarts_total", "Restarts after a crash", MetricType::Counter,
                [](const ExtensionStats& s) { return s.restarts; });
  per_extension("airlock_skills_loaded", "Skills loaded into the extension", MetricType::Gauge,
                [](const ExtensionStats& s) { return s.skills.size(); });
  {
    auto f = family("airlock_memory_bytes", "The extension process's memory: rss, pss (shared pages split), uss (private)",
                    MetricType::Gauge);
    for (const auto& s : all) {
      for (auto [kind, v] : {std::pair{"rss", s.rss_bytes}, {"pss", s.pss_bytes}, {"uss", s.uss_bytes}}) {
        auto m = metric(s, {{"kind", kind}});
        m.gauge.value = static_cast<double>(v);
        f.metric.push_back(std::move(m));
      }
    }
    out.push_back(std::move(f));
  }
  {
    auto f = family("airlock_call_latency_us", "Call latency in microseconds (log-scale histogram, 9 % buckets)",
                    MetricType::Summary);
    for (const auto& s : all) {
      auto m = metric(s);
      m.summary.sample_count = s.calls;
      m.summary.sample_sum = s.latency_sum_us;
      m.summary.quantile = {{0.5, s.latency_p50_us}, {0.99, s.latency_p99_us}};
      f.metric.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  }
  return out;
}

std::string metrics_text(const std::vector<ExtensionStats>& all) {
  return prometheus::TextSerializer().Serialize(metric_families(all));
}

Result<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::start(const std::string& address, StatsFn stats) {
  std::unique_ptr<MetricsEndpoint> e(new MetricsEndpoint());
  e->collectable_ = std::make_shared<StatsCollectable>(std::move(stats));
  try {
    e->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& ex) {
    return make_error(Code::Unavailable, "cannot serve metrics on '" + address + "': " + ex.what());
  }
  e->exposer_->RegisterCollectable(e->collectable_);
  const auto ports = e->exposer_->GetListeningPorts();
  e->port_ = ports.empty() ? 0 : ports.front();
  return e;
}

MetricsEndpoint::~MetricsEndpoint() {
  exposer_.reset();  // joins its threads: no scrape is running once this returns
}

}  // namespace airlock::detail
