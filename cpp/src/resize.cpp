// Bicubic resampling with Pillow's arithmetic (see resize.hpp for the rules it follows).
#include "ts2net/resize.hpp"

#include <cmath>
#include <stdexcept>

namespace ts2net {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // fractional bits of the fixed-point weights
constexpr double kSupport = 2.0;            // bicubic filter support (radius) at scale 1

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Taps of one axis: for each output index, the first input index, the tap count and the weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out_size * ksize], fixed point
};

Taps precompute(int in_size, int out_size) {
  const double scale = double(float(in_size)) / out_size;
  const double filter_scale = scale < 1.0 ? 1.0 : scale;
  const double support = kSupport * filter_scale;
  Taps taps;
  taps.ksize = int(std::ceil(support)) * 2 + 1;
  taps.first.resize(size_t(out_size));
  taps.count.resize(size_t(out_size));
  taps.weights.assign(size_t(out_size) * size_t(taps.ksize), 0);
  std::vector<double> k(size_t(taps.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filter_scale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[size_t(x)] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[size_t(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[size_t(x)] / ww : k[size_t(x)];
      taps.weights[size_t(xx) * size_t(taps.ksize) + size_t(x)] =
          w < 0 ? int32_t(-0.5 + w * (1 << kPrecisionBits)) : int32_t(0.5 + w * (1 << kPrecisionBits));
    }
    taps.first[size_t(xx)] = xmin;
    taps.count[size_t(xx)] = xmax;
  }
  return taps;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return uint8_t(v >> kPrecisionBits);
}

// One output RGB pixel: the n input pixels from `first`, `step` bytes apart (3 along a row, a row's
// width in bytes down a column), weighted by the fixed-point taps k and rounded as Pillow does.
inline void weighted_pixel(const uint8_t* first, size_t step, const int32_t* k, int n, uint8_t* dst) {
  int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
  for (int i = 0; i < n; ++i) {
    const uint8_t* p = first + size_t(i) * step;
    s0 += p[0] * k[i];
    s1 += p[1] * k[i];
    s2 += p[2] * k[i];
  }
  dst[0] = clip8(s0);
  dst[1] = clip8(s1);
  dst[2] = clip8(s2);
}

// One horizontal pass: rows [y0, y0 + rows) of `in`, resampled to `taps` columns.
RgbImage horizontal_pass(const RgbImage& in, const Taps& h, int out_w, int y0, int rows) {
  RgbImage out{out_w, rows, std::vector<uint8_t>(size_t(out_w) * size_t(rows) * 3)};
  for (int y = 0; y < rows; ++y) {
    const uint8_t* line = &in.pixels[size_t(y + y0) * size_t(in.width) * 3];
    uint8_t* dst = &out.pixels[size_t(y) * size_t(out_w) * 3];
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &h.weights[size_t(xx) * size_t(h.ksize)];
      const int xmin = h.first[size_t(xx)], n = h.count[size_t(xx)];
      weighted_pixel(line + size_t(xmin) * 3, 3, k, n, dst + size_t(xx) * 3);
    }
  }
  return out;
}

// One vertical pass to `out_h` rows; the taps' first rows are shifted by -row_offset (the input
// may hold only the rows from row_offset on).
RgbImage vertical_pass(const RgbImage& in, const Taps& v, int out_h, int row_offset) {
  RgbImage out{in.width, out_h, std::vector<uint8_t>(size_t(in.width) * size_t(out_h) * 3)};
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &v.weights[size_t(yy) * size_t(v.ksize)];
    const int ymin = v.first[size_t(yy)] - row_offset, n = v.count[size_t(yy)];
    uint8_t* dst = &out.pixels[size_t(yy) * size_t(in.width) * 3];
    for (int xx = 0; xx < in.width; ++xx) {
      weighted_pixel(&in.pixels[(size_t(ymin) * size_t(in.width) + size_t(xx)) * 3], size_t(in.width) * 3, k, n,
                     dst + size_t(xx) * 3);
    }
  }
  return out;
}

}  // namespace

RgbImage resize_bicubic(const RgbImage& in, int out_w, int out_h) {
  if (in.width <= 0 || in.height <= 0 || out_w <= 0 || out_h <= 0 ||
      in.pixels.size() != size_t(in.width) * size_t(in.height) * 3)
    throw std::invalid_argument("resize_bicubic: bad image or target size");
  const bool need_h = out_w != in.width, need_v = out_h != in.height;
  if (!need_h && !need_v) return in;
  const Taps h = precompute(in.width, out_w);
  const Taps v = precompute(in.height, out_h);
  // Pillow >= 13 runs the vertical pass first when the height shrinks and the width does not
  // (a cheaper horizontal pass); otherwise horizontal first, over only the rows the vertical
  // pass will read. The 8-bit rounding between passes makes the order visible in the result.
  const bool horizontal_first = !(out_w >= in.width && out_h < in.height);
  if (horizontal_first) {
    if (!need_h) return vertical_pass(in, v, out_h, 0);
    const int y_first = v.first[0];
    const int y_last = v.first[size_t(out_h - 1)] + v.count[size_t(out_h - 1)];
    const RgbImage temp = horizontal_pass(in, h, out_w, y_first, y_last - y_first);
    return need_v ? vertical_pass(temp, v, out_h, y_first) : temp;
  }
  const RgbImage temp = vertical_pass(in, v, out_h, 0);
  return need_h ? horizontal_pass(temp, h, out_w, 0, out_h) : temp;
}

}  // namespace ts2net
