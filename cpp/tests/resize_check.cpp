// Test helper: resize an RGB uint8 .npy [H, W, 3] with ts2net::resize_bicubic, or preprocess it
// with ts2net::preprocess_frame, so pytest can compare with Pillow / runtime.video on any image.
//   ts2net-resize-check resize IN.npy WIDTH HEIGHT OUT.npy
//   ts2net-resize-check preprocess IN.npy SIZE OUT.npy
#include <iostream>
#include <string>

#include "ts2net/ts2net.hpp"

int main(int argc, char** argv) {
  using namespace ts2net;
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (!((mode == "resize" && argc == 6) || (mode == "preprocess" && argc == 5))) {
      std::cerr << "usage: ts2net-resize-check resize IN.npy W H OUT.npy | preprocess IN.npy SIZE OUT.npy\n";
      return 2;
    }
    NpyArray in = read_npy(argv[2]);
    if (in.dtype != "|u1" || in.shape.size() != 3 || in.shape[2] != 3) throw Error("expected uint8 [H, W, 3]");
    RgbImage img{int(in.shape[1]), int(in.shape[0]), in.bytes};
    if (mode == "resize") {
      RgbImage out = resize_bicubic(img, std::stoi(argv[3]), std::stoi(argv[4]));
      write_npy(argv[5], {out.height, out.width, 3}, out.pixels);
    } else {
      const int size = std::stoi(argv[3]);
      std::vector<float> out(size_t(3) * size_t(size) * size_t(size));
      preprocess_frame(img, size, kClipMean, kClipStd, out.data());
      write_npy(argv[4], {3, size, size}, out);
    }
    return 0;
  } catch (const std::exception& exc) {
    std::cerr << "ts2net-resize-check: " << exc.what() << "\n";
    return 2;
  }
}
