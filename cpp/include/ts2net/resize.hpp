// Pillow-identical bicubic resize of 8-bit RGB images (Image.resize(size, BICUBIC), no box, no
// reducing_gap), written from the algorithm:
//   - separable: two 8-bit passes; horizontal first (over only the rows the vertical pass
//     reads), except vertical first when the height shrinks and the width does not (Pillow 13);
//   - per output pixel, the filter centre is (x + 0.5) * scale in input coordinates; on
//     downsampling the bicubic support (2, a = -0.5) and the kernel's argument are scaled by
//     scale = in / out, on upsampling not; the taps run over [int(centre - support + 0.5),
//     int(centre + support + 0.5)) clipped to the image; the weights are normalised to sum 1;
//   - 8-bit fixed point: weights rounded half away from zero to 22 fractional bits, the sum
//     starts at 2^21 (rounding) and is clipped to 0..255 after a 22-bit right shift.
#pragma once

#include <cstdint>
#include <vector>

namespace ts2net {

// Packed RGB, row-major, 3 bytes per pixel.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // height * width * 3
};

RgbImage resize_bicubic(const RgbImage& in, int out_width, int out_height);

}  // namespace ts2net
