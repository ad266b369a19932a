// The host's metrics (ExtensionStats of every extension) as Prometheus metric families,
// built when asked: one definition for Host::metrics_text() and for the HTTP endpoint
// of Host::serve_metrics() (prometheus-cpp's Exposer).
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "airlock/host.h"

namespace prometheus {
class Exposer;
}

namespace airlock::detail {

std::vector<prometheus::MetricFamily> metric_families(const std::vector<ExtensionStats>& all);
std::string metrics_text(const std::vector<ExtensionStats>& all);

// An HTTP endpoint serving GET /metrics on its own threads (civetweb, 2 of them): each
// scrape reads the stats afresh through `stats`.
class MetricsEndpoint {
 public:
  using StatsFn = std::function<std::vector<ExtensionStats>()>;
  // `address`: "HOST:PORT" (port 0: any free one). Unavailable if it cannot listen there.
  static Result<std::unique_ptr<MetricsEndpoint>> start(const std::string& address, StatsFn stats);
  ~MetricsEndpoint();
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  std::shared_ptr<prometheus::Collectable> collectable_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace airlock::detail
