// Bundle: manifest checks and file verification, the same facts as runtime/bundle.py.
#include "ts2net/bundle.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>

#include "ts2net/errors.hpp"

namespace ts2net {
namespace {

using json = nlohmann::json;

const char* const kGraphs[] = {"text", "video"};
const char* const kDtypes[] = {"float32", "float16", "int64", "int32", "bool"};
const char* const kModelKeys[] = {"image_size", "max_frames", "max_words", "embed_dim", "top_k"};
const char* const kSimilarityKeys[] = {"logit_scale", "frame_mask_mode", "tokens_per_frame", "frame_softmax_factor"};

bool is_dir(const std::string& p) { struct stat s; return ::stat(p.c_str(), &s) == 0 && S_ISDIR(s.st_mode); }
bool is_file(const std::string& p) { struct stat s; return ::stat(p.c_str(), &s) == 0 && S_ISREG(s.st_mode); }

bool plain_relative(const std::string& name) {
  if (name.empty() || name[0] == '/' || name.find('\\') != std::string::npos) return false;
  std::stringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '/'))
    if (part == "..") return false;
  return true;
}

void check_file_entry(const std::string& where, const json& entry, std::vector<std::string>& problems) {
  static const std::regex sha(R"(^[0-9a-f]{64}$)");
  if (!entry.is_object()) {
    problems.push_back(where + ": expected an object with 'file' and 'sha256'");
    return;
  }
  if (!entry.contains("file") || !entry["file"].is_string() || entry["file"].get<std::string>().empty())
    problems.push_back(where + ".file: missing or not a string");
  else if (!plain_relative(entry["file"].get<std::string>()))
    problems.push_back(where + ".file: '" + entry["file"].get<std::string>() +
                       "' must be a plain relative path inside the bundle");
  if (!entry.contains("sha256") || !entry["sha256"].is_string() ||
      !std::regex_match(entry["sha256"].get<std::string>(), sha))
    problems.push_back(where + ".sha256: missing or not 64 lowercase hex digits");
}

void check_tensors(const std::string& where, const json& tensors, std::vector<std::string>& problems) {
  if (!tensors.is_array() || tensors.empty()) {
    problems.push_back(where + ": expected a non-empty list of tensors");
    return;
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const std::string label = where + "[" + std::to_string(i) + "]";
    if (!t.is_object()) { problems.push_back(label + ": expected an object with name, dtype, shape"); continue; }
    if (!t.contains("name") || !t["name"].is_string()) problems.push_back(label + ".name: missing");
    bool dtype_ok = false;
    for (auto d : kDtypes) dtype_ok = dtype_ok || (t.contains("dtype") && t["dtype"] == d);
    if (!dtype_ok) problems.push_back(label + ".dtype: not one of float32, float16, int64, int32, bool");
    bool shape_ok = t.contains("shape") && t["shape"].is_array();
    if (shape_ok)
      for (const auto& d : t["shape"])
        shape_ok = shape_ok && ((d.is_number_integer() && d.get<int64_t>() > 0) || (d.is_string() && !d.get<std::string>().empty()));
    if (!shape_ok) problems.push_back(label + ".shape: must be a list of positive ints and named dynamic axes");
  }
}

std::vector<TensorSpec> tensor_specs(const json& tensors) {
  std::vector<TensorSpec> out;
  for (const auto& t : tensors) {
    TensorSpec spec{t["name"].get<std::string>(), t["dtype"].get<std::string>(), {}};
    for (const auto& d : t["shape"]) spec.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
    out.push_back(spec);
  }
  return out;
}

}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open for reading");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), std::streamsize(block.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx, block.data(), size_t(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) { out += hex[digest[i] >> 4]; out += hex[digest[i] & 15]; }
  return out;
}

std::vector<std::string> manifest_problems(const json& m) {
  if (!m.is_object()) return {"the manifest is not a JSON object"};
  std::vector<std::string> problems;
  if (!m.contains("format") || m["format"] != kFormatName)
    problems.push_back(std::string("format: ") + (m.contains("format") ? m["format"].dump() : "missing") +
                       ", expected \"" + kFormatName + "\"");
  if (!m.contains("format_version") || !m["format_version"].is_number_integer() || m["format_version"] != kFormatVersion)
    problems.push_back("format_version: " + (m.contains("format_version") ? m["format_version"].dump() : std::string("missing")) +
                       " is not supported by this reader (supported: [1]); use a ts2net-cpp matching the exporter's version");
  for (auto section : {"model", "preprocessing", "tokenizer", "similarity", "graphs"})
    if (!m.contains(section) || !m[section].is_object())
      problems.push_back(std::string(section) + ": required section missing or not an object");
  if (m.contains("model") && m["model"].is_object())
    for (auto key : kModelKeys)
      if (!m["model"].contains(key) || !m["model"][key].is_number_integer())
        problems.push_back(std::string("model.") + key + ": missing or not an integer");
  if (m.contains("similarity") && m["similarity"].is_object())
    for (auto key : kSimilarityKeys)
      if (!m["similarity"].contains(key)) problems.push_back(std::string("similarity.") + key + ": missing");
  if (m.contains("tokenizer") && m["tokenizer"].is_object()) check_file_entry("tokenizer", m["tokenizer"], problems);
  if (m.contains("graphs") && m["graphs"].is_object()) {
    const auto& graphs = m["graphs"];
    for (auto g : kGraphs)
      if (!graphs.contains(g) || !graphs[g].is_object() || !graphs[g].contains("fp32"))
        problems.push_back(std::string("graphs.") + g + ": missing (every bundle has FP32 text and video graphs)");
    for (const auto& [graph, precisions] : graphs.items()) {
      if (!precisions.is_object()) { problems.push_back("graphs." + graph + ": expected an object keyed by precision"); continue; }
      for (const auto& [precision, entry] : precisions.items()) {
        const std::string where = "graphs." + graph + "." + precision;
        check_file_entry(where, entry, problems);
        if (entry.is_object()) {
          check_tensors(where + ".inputs", entry.value("inputs", json()), problems);
          check_tensors(where + ".outputs", entry.value("outputs", json()), problems);
          if (entry.contains("external_data")) check_file_entry(where + ".external_data", entry["external_data"], problems);
          if (entry.contains("openvino_ir")) {
            check_file_entry(where + ".openvino_ir", entry["openvino_ir"], problems);
            if (entry["openvino_ir"].is_object())
              check_file_entry(where + ".openvino_ir.weights", entry["openvino_ir"].value("weights", json()), problems);
          }
        }
      }
    }
  }
  if (m.contains("engines") && !m["engines"].is_null()) {
    if (!m["engines"].is_object()) problems.push_back("engines: expected an object keyed by graph name");
    else for (const auto& [graph, entry] : m["engines"].items()) check_file_entry("engines." + graph, entry, problems);
  }
  if (m.contains("reference") && !m["reference"].is_null()) check_file_entry("reference", m["reference"], problems);
  return problems;
}

Bundle::Bundle(std::string dir, json manifest)
    : dir_(std::move(dir)), manifest_(std::move(manifest)),
      verified_lock_(std::make_shared<std::mutex>()), verified_(std::make_shared<std::set<std::string>>()) {}

Bundle Bundle::open(const std::string& dir_in, bool verify, bool allow_invalid) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir)) throw BundleError(dir + ": not a directory; a bundle is the directory `ts2net export` writes");
  const std::string manifest_path = dir + "/" + kManifestName;
  if (!is_file(manifest_path))
    throw BundleError(dir + ": no " + kManifestName + "; is this a bundle made by `ts2net export`?");
  json manifest;
  try {
    std::ifstream in(manifest_path);
    manifest = json::parse(in);
  } catch (const std::exception& exc) {
    throw BundleError(manifest_path + ": not readable JSON (" + exc.what() + ")");
  }
  auto problems = manifest_problems(manifest);
  if (!problems.empty()) {
    std::string msg = manifest_path + ": not a usable ts2net bundle manifest:";
    for (const auto& p : problems) msg += "\n  - " + p;
    throw BundleError(msg);
  }
  if (!(manifest.contains("valid") && manifest["valid"] == true) && !allow_invalid)
    throw BundleError(dir + ": the manifest marks this bundle invalid (\"valid\": false): its FP32 graphs did not "
                      "pass export validation, or the export did not finish. See validation.md in the bundle and "
                      "re-export it");
  Bundle bundle(dir, std::move(manifest));
  if (verify) bundle.verify_all();
  return bundle;
}

bool Bundle::valid() const { return manifest_.contains("valid") && manifest_["valid"] == true; }
int Bundle::image_size() const { return manifest_["model"]["image_size"].get<int>(); }
int Bundle::max_frames() const { return manifest_["model"]["max_frames"].get<int>(); }
int Bundle::max_words() const { return manifest_["model"]["max_words"].get<int>(); }
int Bundle::embed_dim() const { return manifest_["model"]["embed_dim"].get<int>(); }

SimilarityParams Bundle::similarity() const {
  const auto& s = manifest_["similarity"];
  SimilarityParams p;
  p.logit_scale = s["logit_scale"].get<float>();
  p.frame_mask_mode = s["frame_mask_mode"].get<std::string>();
  p.tokens_per_frame = s["tokens_per_frame"].get<int>();
  p.softmax_factor = s["frame_softmax_factor"].get<float>();
  if (p.frame_mask_mode != "official" && p.frame_mask_mode != "fixed")
    throw BundleError(dir_ + "/" + kManifestName + ": similarity.frame_mask_mode '" + p.frame_mask_mode +
                      "' is not 'official' or 'fixed'");
  return p;
}

Preprocessing Bundle::preprocessing() const {
  const auto& pre = manifest_["preprocessing"];
  Preprocessing p;
  p.image_size = pre.value("image_size", image_size());
  p.max_frames = pre.value("max_frames", max_frames());
  for (const char* key : {"mean", "std"}) {
    if (!pre.contains(key) || !pre[key].is_array() || pre[key].size() != 3)
      throw BundleError(dir_ + "/" + kManifestName + ": preprocessing." + key + " must be a list of 3 numbers (R, G, B)");
    auto& dst = std::string(key) == "mean" ? p.mean : p.std;
    // float(np.float64) -> float32, as numpy's np.asarray(mean, np.float32) rounds the Python floats
    for (int c = 0; c < 3; ++c) dst[size_t(c)] = float(pre[key][size_t(c)].get<double>());
  }
  return p;
}

std::vector<std::string> Bundle::precisions(const std::string& graph) const {
  std::vector<std::string> out;
  if (manifest_["graphs"].contains(graph))
    for (const auto& [precision, entry] : manifest_["graphs"][graph].items()) out.push_back(precision);
  return out;
}

bool Bundle::has_graph(const std::string& graph, const std::string& precision) const {
  return manifest_["graphs"].contains(graph) && manifest_["graphs"][graph].contains(precision);
}

GraphEntry Bundle::graph(const std::string& graph, const std::string& precision) const {
  if (!has_graph(graph, precision)) {
    std::string have;
    for (const auto& p : precisions(graph)) have += (have.empty() ? "" : ", ") + p;
    throw BundleError(dir_ + ": no " + precision + " " + graph + " graph (bundle has " + have + ")");
  }
  const auto& e = manifest_["graphs"][graph][precision];
  GraphEntry entry;
  entry.graph = graph;
  entry.precision = precision;
  entry.file = e["file"];
  entry.sha256 = e["sha256"];
  entry.inputs = tensor_specs(e["inputs"]);
  entry.outputs = tensor_specs(e["outputs"]);
  if (e.contains("external_data")) entry.external_data_file = e["external_data"]["file"];
  if (e.contains("openvino_ir")) {
    entry.openvino_ir_file = e["openvino_ir"]["file"];
    entry.openvino_ir_weights_file = e["openvino_ir"]["weights"]["file"];
  }
  return entry;
}

std::string Bundle::graph_path(const std::string& graph_name, const std::string& precision) const {
  auto entry = graph(graph_name, precision);
  if (!entry.external_data_file.empty()) verified_file(entry.external_data_file);
  return verified_file(entry.file);
}

std::pair<std::string, std::string> Bundle::openvino_ir_paths(const std::string& graph_name,
                                                              const std::string& precision) const {
  auto entry = graph(graph_name, precision);
  if (entry.openvino_ir_file.empty())
    throw BundleError(dir_ + ": the " + precision + " " + graph_name + " graph has no OpenVINO IR form");
  return {verified_file(entry.openvino_ir_file), verified_file(entry.openvino_ir_weights_file)};
}

std::map<std::string, std::string> Bundle::listed_files() const {
  std::map<std::string, std::string> files;
  files[manifest_["tokenizer"]["file"]] = "tokenizer";
  for (const auto& [graph, precisions] : manifest_["graphs"].items())
    for (const auto& [precision, entry] : precisions.items()) {
      files[entry["file"]] = "graphs." + graph + "." + precision;
      if (entry.contains("external_data"))
        files[entry["external_data"]["file"]] = "graphs." + graph + "." + precision + ".external_data";
      if (entry.contains("openvino_ir")) {
        files[entry["openvino_ir"]["file"]] = "graphs." + graph + "." + precision + ".openvino_ir";
        files[entry["openvino_ir"]["weights"]["file"]] = "graphs." + graph + "." + precision + ".openvino_ir.weights";
      }
    }
  if (manifest_.contains("engines") && manifest_["engines"].is_object())
    for (const auto& [graph, entry] : manifest_["engines"].items()) files[entry["file"]] = "engines." + graph;
  if (manifest_.contains("reference") && manifest_["reference"].is_object())
    files[manifest_["reference"]["file"]] = "reference";
  return files;
}

std::string Bundle::expected_sha256(const std::string& name) const {
  auto check = [&](const json& e) { return e.is_object() && e.contains("file") && e["file"] == name; };
  if (check(manifest_["tokenizer"])) return manifest_["tokenizer"]["sha256"];
  for (const auto& [graph, precisions] : manifest_["graphs"].items())
    for (const auto& [precision, entry] : precisions.items()) {
      if (check(entry)) return entry["sha256"];
      if (entry.contains("external_data") && check(entry["external_data"])) return entry["external_data"]["sha256"];
      if (entry.contains("openvino_ir")) {
        if (check(entry["openvino_ir"])) return entry["openvino_ir"]["sha256"];
        if (check(entry["openvino_ir"]["weights"])) return entry["openvino_ir"]["weights"]["sha256"];
      }
    }
  if (manifest_.contains("engines") && manifest_["engines"].is_object())
    for (const auto& [graph, entry] : manifest_["engines"].items())
      if (check(entry)) return entry["sha256"];
  if (manifest_.contains("reference") && check(manifest_["reference"])) return manifest_["reference"]["sha256"];
  throw BundleError(dir_ + ": " + name + " is not listed in " + kManifestName);
}

std::string Bundle::verified_file(const std::string& name) const {
  const std::string path = dir_ + "/" + name;
  {
    std::lock_guard<std::mutex> lock(*verified_lock_);
    if (verified_->count(name)) return path;
  }
  const std::string expected = expected_sha256(name);
  if (!is_file(path))
    throw BundleError(dir_ + ": " + name + " is listed in " + kManifestName +
                      " but missing from the bundle (incomplete copy? copy the whole bundle directory or re-export it)");
  const std::string found = sha256_file(path);
  if (found != expected)
    throw BundleError(dir_ + ": " + name + " does not match its checksum in " + kManifestName + " (expected sha256 " +
                      expected.substr(0, 16) + "..., file has " + found.substr(0, 16) +
                      "...): the file was modified or truncated after export; re-export the bundle or restore the file");
  std::lock_guard<std::mutex> lock(*verified_lock_);
  verified_->insert(name);
  return path;
}

void Bundle::verify_all() const {
  std::vector<std::string> problems;
  for (const auto& [name, where] : listed_files()) {
    try {
      verified_file(name);
    } catch (const BundleError& exc) {
      problems.push_back(exc.what());
    }
  }
  if (problems.size() == 1) throw BundleError(problems[0]);
  if (!problems.empty()) {
    std::string msg = std::to_string(problems.size()) + " bundle files failed verification:";
    for (const auto& p : problems) msg += "\n  - " + p;
    throw BundleError(msg);
  }
}

std::map<std::string, NpyArray> Bundle::reference(const std::vector<std::string>& names) const {
  if (!manifest_.contains("reference") || !manifest_["reference"].is_object())
    throw BundleError(dir_ + ": the manifest lists no reference outputs (export did not finish?); re-export the bundle");
  const std::string path = verified_file(manifest_["reference"]["file"]);
  try {
    return read_npz(path, names);
  } catch (const BundleError&) {
    throw;
  } catch (const Error& exc) {
    throw BundleError(exc.what());
  }
}

}  // namespace ts2net
