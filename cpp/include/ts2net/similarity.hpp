// TS2-Net text-to-video similarity (docs/bundle-format.md#similarity), float32 like the Python
// runtime (runtime/frame_similarity.py):
//   m = effective frame mask ("fixed": the mask; "official": m[f] = mask[(M * f) mod T]);
//   t = text / |text|, e_f = frame_f / |frame_f| (a zero vector stays zero); s_f = e_f . t;
//   u = s * m; u = factor * u / |u|_2 (|u| = 0 counts as 1); u_f = -1e18 where m_f = 0;
//   w = softmax(u) over frames; sim = logit_scale * sum_f w_f s_f.
#pragma once

#include <cstdint>
#include <vector>

#include "ts2net/bundle.hpp"

namespace ts2net {

// The mask the official code effectively applies ([videos * frames] 0/1).
std::vector<uint8_t> effective_frame_mask(const std::vector<uint8_t>& mask, int64_t videos, int64_t frames,
                                          const std::string& mode, int tokens_per_frame);

// Scores [texts, videos] (row-major). An Error if a video has no frame left under its effective
// mask (the softmax would be undefined).
std::vector<float> similarity(const std::vector<float>& text_embeds, int64_t texts,
                              const std::vector<float>& frame_embeds, const std::vector<uint8_t>& frame_mask,
                              int64_t videos, int64_t frames, int64_t dim, const SimilarityParams& params);

// Indices of one row sorted by descending score, ties in index order (a stable sort).
std::vector<int64_t> ranking(const float* scores, int64_t n);

}  // namespace ts2net
