// Text and video encoders over OpenVINO's C++ API, for the precisions a bundle carries.
//
// Precision names: any graph precision the manifest lists (fp32, fp16, int8, ...) runs that graph
// (its OpenVINO IR form when the manifest lists one, else the ONNX file)
// with INFERENCE_PRECISION_HINT f32 (OpenVINO's CPU plugin would otherwise compute in bf16 on
// AMX machines, which is not what "fp32" promises); "bf16" runs the fp32 graph with the bf16 hint,
// only where the device reports BF16 in OPTIMIZATION_CAPABILITIES (else an Error says so).
// The text graph of a bf16 / int8 path runs fp32 unless text_precision says otherwise, as in the
// Python runtime (docs/openvino.md, "Text stays FP32"): reduced-precision text embeddings reorder
// near-duplicate captions, and one query's text graph costs little next to a video's.
// The batch axis is dynamic: any batch size runs on the same compiled model. One encoder holds one
// infer request: call encode from one thread at a time (make one encoder per thread otherwise).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ts2net/bundle.hpp"

namespace ov {
class Core;
}

namespace ts2net {

struct EncoderOptions {
  std::string precision = "fp32";       // the video graph's (and, for fp32 / fp16, the text graph's)
  std::string text_precision;           // empty: text_precision_for(precision)
  std::string device = "CPU";
  int threads = 0;  // 0: OpenVINO's default (all cores)
};

// Which graph file and inference hint a precision name means for this bundle (Error if none).
struct PrecisionPlan {
  std::string graph_precision;  // manifest key of the graph to load
  std::string hint;             // "f32" | "bf16"
  std::string model_file;       // the file OpenVINO reads: the OpenVINO IR .xml when the entry has one, else the .onnx
};
PrecisionPlan plan_precision(const Bundle& bundle, const std::string& graph, const std::string& precision,
                             ov::Core& core, const std::string& device);

// The text graph's precision on a path whose video graph runs `precision`: fp32 for bf16 / int8.
std::string text_precision_for(const EncoderOptions& options);

// One shared ov::Core (plugins are loaded once per process).
ov::Core& shared_core();

struct VideoEmbeddings {
  int64_t batch = 0, frames = 0, dim = 0, top_k = 0;
  std::vector<float> frame_embeds;     // [batch, frames, dim]
  std::vector<int64_t> patch_indices;  // [batch, frames, top_k] (empty without token selection)
};

class VideoEncoder {
 public:
  VideoEncoder(const Bundle& bundle, const EncoderOptions& options = {});
  ~VideoEncoder();
  VideoEncoder(VideoEncoder&&) noexcept;
  // frames [batch, max_frames, 3, S, S] float32, mask [batch, max_frames] int64.
  VideoEmbeddings encode(const float* frames, const int64_t* mask, int64_t batch);
  const PrecisionPlan& plan() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class TextEncoder {
 public:
  TextEncoder(const Bundle& bundle, const EncoderOptions& options = {});
  ~TextEncoder();
  TextEncoder(TextEncoder&&) noexcept;
  // input_ids [batch, max_words] int64 -> text_embeds [batch, embed_dim] float32.
  std::vector<float> encode(const int64_t* input_ids, int64_t batch);
  const PrecisionPlan& plan() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ts2net
