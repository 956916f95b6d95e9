// Parity of the bundle's graphs run by OpenVINO against the PyTorch FP32 outputs recorded in
// reference.npz, with the figures and thresholds of the Python runtime (runtime/parity.py).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ts2net/bundle.hpp"
#include "ts2net/encoder.hpp"

namespace ts2net {

struct ParityReport {
  std::string precision;
  nlohmann::json thresholds;
  nlohmann::json figures;
  std::vector<std::string> failures;
  std::vector<std::string> notes;  // thresholds not checkable on the reference inputs
  bool passed() const { return failures.empty(); }
  nlohmann::json to_json() const;
};

// Thresholds for a precision row: the manifest's parity.<precision>.thresholds when the export
// recorded them, else the design's table (fp32 row for fp32; the bf16/int8 row otherwise).
nlohmann::json parity_thresholds(const Bundle& bundle, const std::string& precision);

ParityReport run_parity(const Bundle& bundle, const EncoderOptions& options);

}  // namespace ts2net
