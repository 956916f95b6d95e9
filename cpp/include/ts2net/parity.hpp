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
  std::string text_precision;  // the text graph's (fp32 on bf16 / int8 runs unless asked otherwise)
  std::string text_model, video_model;  // the files OpenVINO ran
  nlohmann::json thresholds;
  nlohmann::json figures;
  std::vector<std::string> failures;
  std::vector<std::string> notes;  // thresholds not checkable on the reference inputs
  bool passed() const { return failures.empty(); }
  nlohmann::json to_json() const;
};

// Thresholds for a precision row: the manifest's parity.<key>.thresholds when the export recorded
// them (key: the precision, or "<precision>_openvino" when the OpenVINO IR form runs), else the
// design's table (fp32 row for fp32, fp16 row for fp16, the BF16/INT8 row otherwise).
nlohmann::json parity_thresholds(const Bundle& bundle, const std::string& precision, bool openvino_ir = false);

ParityReport run_parity(const Bundle& bundle, const EncoderOptions& options);

}  // namespace ts2net
