// TS2-Net similarity in float32 (formula in similarity.hpp and docs/bundle-format.md).
#include "ts2net/similarity.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ts2net/errors.hpp"

namespace ts2net {
namespace {

constexpr float kMaskFill = -1e18f;

// L2-normalise each row of [rows, dim] in float32; a zero row stays zero (never NaN).
std::vector<float> normalized(const std::vector<float>& x, int64_t rows, int64_t dim) {
  std::vector<float> out(x);
  for (int64_t r = 0; r < rows; ++r) {
    float* v = out.data() + r * dim;
    float ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += v[d] * v[d];
    float n = std::sqrt(ss);
    if (n == 0) n = 1;
    for (int64_t d = 0; d < dim; ++d) v[d] /= n;
  }
  return out;
}

}  // namespace

std::vector<uint8_t> effective_frame_mask(const std::vector<uint8_t>& mask, int64_t videos, int64_t frames,
                                          const std::string& mode, int tokens_per_frame) {
  if (mode == "fixed") return mask;
  if (mode != "official") throw Error("frame_mask_mode '" + mode + "': expected 'official' or 'fixed'");
  if (tokens_per_frame < 1) throw Error("tokens_per_frame must be >= 1");
  // The official code reads the mask as if each frame had tokens_per_frame tokens: m[f] = mask[(M f) mod T].
  std::vector<uint8_t> out(mask.size());
  for (int64_t v = 0; v < videos; ++v)
    for (int64_t f = 0; f < frames; ++f)
      out[size_t(v * frames + f)] = mask[size_t(v * frames + (int64_t(tokens_per_frame) * f) % frames)];
  return out;
}

std::vector<float> similarity(const std::vector<float>& text_embeds, int64_t texts,
                              const std::vector<float>& frame_embeds, const std::vector<uint8_t>& frame_mask,
                              int64_t videos, int64_t frames, int64_t dim, const SimilarityParams& p) {
  if (int64_t(text_embeds.size()) != texts * dim || int64_t(frame_embeds.size()) != videos * frames * dim ||
      int64_t(frame_mask.size()) != videos * frames)
    throw Error("similarity: text_embeds [" + std::to_string(texts) + ", " + std::to_string(dim) + "], frame_embeds [" +
                std::to_string(videos) + ", " + std::to_string(frames) + ", " + std::to_string(dim) +
                "] and frame_mask [videos, frames] do not match the given sizes");
  const auto eff = effective_frame_mask(frame_mask, videos, frames, p.frame_mask_mode, p.tokens_per_frame);
  for (int64_t v = 0; v < videos; ++v) {
    bool any = false;
    for (int64_t f = 0; f < frames; ++f) any = any || eff[size_t(v * frames + f)];
    if (!any)
      throw Error("frame_mask leaves no frame for video index " + std::to_string(v) + " under the effective '" +
                  p.frame_mask_mode + "' mask");
  }
  const auto t = normalized(text_embeds, texts, dim);
  const auto e = normalized(frame_embeds, videos * frames, dim);
  std::vector<float> out(static_cast<size_t>(texts * videos));
  std::vector<float> s(static_cast<size_t>(frames)), u(static_cast<size_t>(frames));
  for (int64_t v = 0; v < videos; ++v) {
    const uint8_t* m = &eff[size_t(v * frames)];
    for (int64_t q = 0; q < texts; ++q) {
      float norm2 = 0;
      for (int64_t f = 0; f < frames; ++f) {
        const float* ef = &e[size_t((v * frames + f) * dim)];
        const float* tq = &t[size_t(q * dim)];
        float dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot += ef[d] * tq[d];
        s[size_t(f)] = dot;
        u[size_t(f)] = m[f] ? dot : 0.0f;
        norm2 += u[size_t(f)] * u[size_t(f)];
      }
      float norm = std::sqrt(norm2);
      if (norm == 0) norm = 1;
      const float factor = p.softmax_factor / norm;
      float top = -INFINITY;
      for (int64_t f = 0; f < frames; ++f) {
        u[size_t(f)] = m[f] ? u[size_t(f)] * factor : kMaskFill;
        top = std::max(top, u[size_t(f)]);
      }
      float num = 0, den = 0;
      for (int64_t f = 0; f < frames; ++f) {
        const float w = std::exp(u[size_t(f)] - top);
        num += w * s[size_t(f)];
        den += w;
      }
      out[size_t(q * videos + v)] = num / den * p.logit_scale;
    }
  }
  return out;
}

std::vector<int64_t> ranking(const float* scores, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

}  // namespace ts2net
