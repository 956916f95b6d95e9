// Video decoding (FFmpeg) with the official TS2-Net sampling rule and per-frame transform, the
// same as the Python runtime's runtime/video.py (docs/semantics.md, docs/cpp.md):
//   fps = int(container fps); one sample per fps frames, a partial last second gives a sample;
//   more than max_frames samples: linspace(0, n - 1, max_frames) truncated; each frame RGB,
//   bicubic short side to image_size (long side truncated; none when the short side already
//   equals it), center crop at int((dim - size + 1) * 0.5), /255, mean/std; zero padding, mask 0.
// Frames are decoded sequentially (no seeking) and the sampling uses the count of decodable
// frames; container metadata only predicts which frames to keep (a wrong prediction costs a second
// pass, never a wrong answer). Any open/demux/decode failure is a VideoDecodeError naming the file.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "ts2net/bundle.hpp"
#include "ts2net/errors.hpp"
#include "ts2net/resize.hpp"

namespace ts2net {

inline constexpr std::array<float, 3> kClipMean{0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> kClipStd{0.26862954f, 0.26130258f, 0.27577711f};

// What cv2 would report (fps ~ CAP_PROP_FPS, frame_count ~ CAP_PROP_FRAME_COUNT).
struct VideoInfo {
  std::string path;
  double fps = 0;
  int64_t frame_count = 0;
  std::string frame_count_source;  // "stream" (nb_frames) | "duration" (estimate) | "unknown"
  int width = 0;
  int height = 0;
  std::string codec;
  int64_t duration_frames = 0;  // round(container duration * fps): what an edit list leaves to play
};

// Frames a stream may decode short of the count its container states before the file counts as
// truncated (see check_frame_count).
inline constexpr int64_t kFrameCountTolerance = 1;

// A VideoDecodeError when fewer frames decode than an exact container count (MP4/MOV nb_frames)
// states: a cut-short "faststart" MP4 often decodes its remaining packets without any error, so
// only the count tells. The expected count is the smaller of nb_frames and round(duration * fps)
// (a stream-copied cut keeps leading samples that its edit list drops), less a 1-frame tolerance
// for rounding; counts estimated from the duration alone (Matroska, MPEG-TS) are not checked.
void check_frame_count(const VideoInfo& info, int64_t decoded);

// One preprocessed clip, as the video graph receives it.
struct Clip {
  std::vector<float> frames;  // [max_frames, 3, size, size], padded frames all zero
  std::vector<int64_t> mask;  // [max_frames], 1 real, 0 padding
  std::vector<int64_t> frame_numbers;  // the decoded frame numbers kept, in order
};

// Version of the decode + transform rules this reader implements: the same number as the Python
// runtime's PREPROCESSING_RULES_VERSION for the same rules (2: crop offset rounded half up).
inline constexpr int kPreprocessingRulesVersion = 2;

// "libavcodec=59.37.100,libavformat=...,libavutil=...,libswscale=..." of the FFmpeg this runs on,
// recorded beside embeddings: another FFmpeg build can change decoded pixels.
std::string decoder_versions();

// FFmpeg's own log lines on stderr (off: the VideoDecodeError message already names the file and
// the cause; on: FFmpeg's detail, for diagnosing a file). Process-wide, as FFmpeg's log level is.
void set_decoder_log(bool enabled);

// Frame numbers the official loader keeps for a video of `frame_count` decodable frames.
std::vector<int64_t> sample_frame_numbers(int64_t frame_count, double fps, int max_frames);

// CLIP transform of one RGB frame into out[3 * size * size] (float32, (x / 255 - mean) / std).
void preprocess_frame(const RgbImage& rgb, int size, const std::array<float, 3>& mean,
                      const std::array<float, 3>& std, float* out);

class VideoReader {
 public:
  explicit VideoReader(Preprocessing preprocessing) : pre_(preprocessing) {}
  static VideoReader for_bundle(const Bundle& bundle) { return VideoReader(bundle.preprocessing()); }

  const Preprocessing& preprocessing() const { return pre_; }
  VideoInfo probe(const std::string& path) const;
  Clip load(const std::string& path) const;
  // RGB frames for the wanted frame numbers in one sequential pass; `count` gets the number of
  // decodable frames.
  std::vector<std::pair<int64_t, RgbImage>> decode(const std::string& path, const std::set<int64_t>& wanted,
                                                   int64_t& count) const;

 private:
  Preprocessing pre_;
};

}  // namespace ts2net
