// A bundle directory opened from manifest.json alone (docs/bundle-format.md is the schema).
//
// The same facts the Python reader (runtime/bundle.py) enforces: format name and version, the
// sections and keys a consumer needs, relative file names inside the bundle, refusal of a bundle
// whose manifest says "valid": false, and the sha256 of every file before it is used (all of them
// up front with verify_all, or each the first time it is opened).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ts2net/npy.hpp"

namespace ts2net {

inline constexpr const char* kFormatName = "ts2net-bundle";
inline constexpr int kFormatVersion = 1;
inline constexpr const char* kManifestName = "manifest.json";

// One graph input or output: name, dtype ("float32", "int64", ...), shape (-1 = dynamic axis).
struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

// graphs.<graph>.<precision> of the manifest.
struct GraphEntry {
  std::string graph;      // "text" | "video"
  std::string precision;  // "fp32", "fp16", "int8", ... as the manifest lists them
  std::string file;
  std::string sha256;
  std::string external_data_file;  // empty when the weights are inside the .onnx
  // The same graph as an OpenVINO IR (model .xml + weights .bin), when the export made one (INT8
  // graphs quantized by NNCF); OpenVINO consumers prefer it. Empty otherwise.
  std::string openvino_ir_file;
  std::string openvino_ir_weights_file;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
};

// The similarity constants (manifest "similarity").
struct SimilarityParams {
  float logit_scale = 100.0f;          // already exponentiated
  std::string frame_mask_mode = "official";  // "official" | "fixed"
  int tokens_per_frame = 4;
  float softmax_factor = 4.0f;
};

// The per-frame transform and sampling constants (manifest "preprocessing" / "model").
struct Preprocessing {
  int image_size = 224;
  int max_frames = 12;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
};

class Bundle {
 public:
  // Opens and checks `dir`. verify_all checks every listed file's sha256 now (else on first use).
  // allow_invalid opens a bundle marked "valid": false (for inspection only).
  static Bundle open(const std::string& dir, bool verify_all = true, bool allow_invalid = false);

  const std::string& path() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  bool valid() const;

  int image_size() const;
  int max_frames() const;
  int max_words() const;
  int embed_dim() const;
  SimilarityParams similarity() const;
  Preprocessing preprocessing() const;

  // Precisions the manifest lists for a graph ("fp32", "fp16", "int8", ...).
  std::vector<std::string> precisions(const std::string& graph) const;
  bool has_graph(const std::string& graph, const std::string& precision) const;
  GraphEntry graph(const std::string& graph, const std::string& precision) const;
  // Verified path of a graph's ONNX file (its external data file is verified too).
  std::string graph_path(const std::string& graph, const std::string& precision) const;
  // Verified (model .xml, weights .bin) of a graph's OpenVINO IR; Error when it has none.
  std::pair<std::string, std::string> openvino_ir_paths(const std::string& graph, const std::string& precision) const;

  // Every file the manifest lists: file name -> where in the manifest it is listed.
  std::map<std::string, std::string> listed_files() const;
  // Path of a listed file after checking it exists and matches its sha256 (once per file).
  std::string verified_file(const std::string& name) const;
  void verify_all() const;

  // Arrays of reference.npz (inputs and PyTorch FP32 outputs recorded at export), verified first.
  std::map<std::string, NpyArray> reference(const std::vector<std::string>& names) const;

 private:
  Bundle(std::string dir, nlohmann::json manifest);
  std::string expected_sha256(const std::string& name) const;

  std::string dir_;
  nlohmann::json manifest_;
  mutable std::shared_ptr<std::mutex> verified_lock_;
  mutable std::shared_ptr<std::set<std::string>> verified_;
};

// Hex SHA-256 of a file's bytes (read in 1 MiB blocks).
std::string sha256_file(const std::string& path);

// Every problem of a manifest's structure (empty: usable); the checks of runtime/bundle.py.
std::vector<std::string> manifest_problems(const nlohmann::json& manifest);

}  // namespace ts2net
