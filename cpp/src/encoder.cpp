// OpenVINO text and video encoders (see encoder.hpp for the precision rules).
#include "ts2net/encoder.hpp"

#include <algorithm>
#include <tuple>
#include <openvino/openvino.hpp>

#include "ts2net/errors.hpp"

namespace ts2net {

ov::Core& shared_core() {
  static ov::Core core;
  return core;
}

PrecisionPlan plan_precision(const Bundle& bundle, const std::string& graph, const std::string& precision,
                             ov::Core& core, const std::string& device) {
  if (precision == "bf16" && !bundle.has_graph(graph, "bf16")) {
    std::vector<std::string> caps;
    try {
      caps = core.get_property(device, ov::device::capabilities);
    } catch (const std::exception& exc) {
      throw Error("device " + device + ": cannot read OPTIMIZATION_CAPABILITIES (" + exc.what() + ")");
    }
    if (std::find(caps.begin(), caps.end(), ov::device::capability::BF16) == caps.end()) {
      std::string have;
      for (const auto& c : caps) have += (have.empty() ? "" : ", ") + c;
      throw Error("precision bf16: device " + device + " does not report BF16 in OPTIMIZATION_CAPABILITIES (" + have +
                  "); this CPU has no native bfloat16 (AVX512-BF16 or AMX); use --precision fp32");
    }
    return {"fp32", "bf16", ""};
  }
  if (!bundle.has_graph(graph, precision)) {
    std::string have;
    for (const auto& p : bundle.precisions(graph)) have += (have.empty() ? "" : ", ") + p;
    throw BundleError(bundle.path() + ": no " + precision + " " + graph + " graph (bundle has " + have +
                      (bundle.has_graph(graph, "fp32") ? "; bf16 runs the fp32 graph with the bf16 hint" : "") + ")");
  }
  return {precision, "f32", ""};
}

std::string text_precision_for(const EncoderOptions& options) {
  if (!options.text_precision.empty()) return options.text_precision;
  return (options.precision == "bf16" || options.precision == "int8") ? "fp32" : options.precision;
}

namespace {

ov::CompiledModel compile(const Bundle& bundle, const std::string& graph, const EncoderOptions& options, PrecisionPlan& plan) {
  ov::Core& core = shared_core();
  const std::string precision = graph == "text" ? text_precision_for(options) : options.precision;
  plan = plan_precision(bundle, graph, precision, core, options.device);
  const GraphEntry entry = bundle.graph(graph, plan.graph_precision);
  std::string weights;
  if (!entry.openvino_ir_file.empty()) {
    std::tie(plan.model_file, weights) = bundle.openvino_ir_paths(graph, plan.graph_precision);
  } else {
    plan.model_file = bundle.graph_path(graph, plan.graph_precision);
  }
  const std::string& path = plan.model_file;
  ov::AnyMap config{{ov::hint::inference_precision.name(), plan.hint == "bf16" ? ov::element::bf16 : ov::element::f32}};
  if (options.threads > 0) config[ov::inference_num_threads.name()] = options.threads;
  try {
    std::shared_ptr<ov::Model> model = weights.empty() ? core.read_model(path) : core.read_model(path, weights);
    return core.compile_model(model, options.device, config);
  } catch (const ov::Exception& exc) {
    std::string what = exc.what();
    throw Error(path + ": OpenVINO cannot compile this graph on " + options.device + ": " + what.substr(0, 400));
  }
}

size_t checked_shape(const std::vector<int64_t>& manifest_shape, size_t index, const std::string& where) {
  if (index >= manifest_shape.size() || manifest_shape[index] <= 0)
    throw BundleError(where + ": the manifest gives no fixed size for axis " + std::to_string(index));
  return size_t(manifest_shape[index]);
}

}  // namespace

struct VideoEncoder::Impl {
  PrecisionPlan plan;
  ov::CompiledModel model;
  ov::InferRequest request;
  size_t frames = 0, size = 0;
  std::string frames_name, mask_name, embeds_name, indices_name;
};

VideoEncoder::VideoEncoder(const Bundle& bundle, const EncoderOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->model = compile(bundle, "video", options, impl_->plan);
  impl_->request = impl_->model.create_infer_request();
  const auto entry = bundle.graph("video", impl_->plan.graph_precision);
  const std::string where = bundle.path() + "/manifest.json graphs.video." + entry.precision;
  if (entry.inputs.size() != 2) throw BundleError(where + ".inputs: expected frames and frame_mask");
  impl_->frames_name = entry.inputs[0].name;
  impl_->mask_name = entry.inputs[1].name;
  impl_->frames = checked_shape(entry.inputs[0].shape, 1, where + ".inputs[0]");
  impl_->size = checked_shape(entry.inputs[0].shape, 3, where + ".inputs[0]");
  impl_->embeds_name = entry.outputs[0].name;
  if (entry.outputs.size() > 1) impl_->indices_name = entry.outputs[1].name;
}
VideoEncoder::~VideoEncoder() = default;
VideoEncoder::VideoEncoder(VideoEncoder&&) noexcept = default;
const PrecisionPlan& VideoEncoder::plan() const { return impl_->plan; }

VideoEmbeddings VideoEncoder::encode(const float* frames, const int64_t* mask, int64_t batch) {
  const size_t T = impl_->frames, S = impl_->size, B = size_t(batch);
  ov::Tensor f(ov::element::f32, {B, T, 3, S, S}, const_cast<float*>(frames));
  ov::Tensor m(ov::element::i64, {B, T}, const_cast<int64_t*>(mask));
  impl_->request.set_tensor(impl_->frames_name, f);
  impl_->request.set_tensor(impl_->mask_name, m);
  impl_->request.infer();
  VideoEmbeddings out;
  const ov::Tensor e = impl_->request.get_tensor(impl_->embeds_name);
  out.batch = batch;
  out.frames = int64_t(e.get_shape()[1]);
  out.dim = int64_t(e.get_shape()[2]);
  out.frame_embeds.assign(e.data<float>(), e.data<float>() + e.get_size());
  if (!impl_->indices_name.empty()) {
    const ov::Tensor p = impl_->request.get_tensor(impl_->indices_name);
    out.top_k = int64_t(p.get_shape()[2]);
    out.patch_indices.resize(p.get_size());
    if (p.get_element_type() == ov::element::i64) {
      std::copy(p.data<int64_t>(), p.data<int64_t>() + p.get_size(), out.patch_indices.begin());
    } else {  // an int32 output after OpenVINO's conversion
      std::copy(p.data<int32_t>(), p.data<int32_t>() + p.get_size(), out.patch_indices.begin());
    }
  }
  return out;
}

struct TextEncoder::Impl {
  PrecisionPlan plan;
  ov::CompiledModel model;
  ov::InferRequest request;
  size_t words = 0;
  std::string ids_name, embeds_name;
};

TextEncoder::TextEncoder(const Bundle& bundle, const EncoderOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->model = compile(bundle, "text", options, impl_->plan);
  impl_->request = impl_->model.create_infer_request();
  const auto entry = bundle.graph("text", impl_->plan.graph_precision);
  const std::string where = bundle.path() + "/manifest.json graphs.text." + entry.precision;
  impl_->ids_name = entry.inputs.at(0).name;
  impl_->words = checked_shape(entry.inputs[0].shape, 1, where + ".inputs[0]");
  impl_->embeds_name = entry.outputs.at(0).name;
}
TextEncoder::~TextEncoder() = default;
TextEncoder::TextEncoder(TextEncoder&&) noexcept = default;
const PrecisionPlan& TextEncoder::plan() const { return impl_->plan; }

std::vector<float> TextEncoder::encode(const int64_t* input_ids, int64_t batch) {
  ov::Tensor ids(ov::element::i64, {size_t(batch), impl_->words}, const_cast<int64_t*>(input_ids));
  impl_->request.set_tensor(impl_->ids_name, ids);
  impl_->request.infer();
  const ov::Tensor e = impl_->request.get_tensor(impl_->embeds_name);
  return std::vector<float>(e.data<float>(), e.data<float>() + e.get_size());
}

}  // namespace ts2net
