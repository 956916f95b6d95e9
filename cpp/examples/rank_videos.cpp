// Open a bundle, encode videos, score token-id queries and print each query's ranking.
//   ts2net-example BUNDLE IDS.npy VIDEO...
// IDS.npy: int64 [queries, max_words] from the bundle's tokenizer (Python: runtime.tokenizer).
#include <cstdio>
#include <vector>

#include "ts2net/ts2net.hpp"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BUNDLE IDS.npy VIDEO...\n", argv[0]);
    return 2;
  }
  try {
    ts2net::Bundle bundle = ts2net::Bundle::open(argv[1]);  // checks format, validity, sha256
    ts2net::VideoReader reader = ts2net::VideoReader::for_bundle(bundle);
    ts2net::VideoEncoder videos(bundle, {"fp32"});
    ts2net::TextEncoder texts(bundle, {"fp32"});
    const int64_t T = bundle.max_frames(), D = bundle.embed_dim(), n = argc - 3;
    std::vector<float> frame_embeds;
    std::vector<uint8_t> mask;
    for (int i = 3; i < argc; ++i) {
      ts2net::Clip clip = reader.load(argv[i]);  // official 1 fps sampling + CLIP transform
      auto e = videos.encode(clip.frames.data(), clip.mask.data(), 1);
      frame_embeds.insert(frame_embeds.end(), e.frame_embeds.begin(), e.frame_embeds.end());
      mask.insert(mask.end(), clip.mask.begin(), clip.mask.end());
    }
    ts2net::NpyArray ids = ts2net::read_npy(argv[2]);
    const int64_t q = ids.shape.at(0);
    std::vector<int64_t> id_values = ids.to_int64(argv[2]);
    std::vector<float> text = texts.encode(id_values.data(), q);
    std::vector<float> scores = ts2net::similarity(text, q, frame_embeds, mask, n, T, D, bundle.similarity());
    for (int64_t query = 0; query < q; ++query) {
      std::printf("query %lld:", static_cast<long long>(query));
      for (int64_t v : ts2net::ranking(&scores[size_t(query * n)], n))
        std::printf(" %s (%.4f)", argv[3 + v], scores[size_t(query * n + v)]);
      std::printf("\n");
    }
    return 0;
  } catch (const std::exception& exc) {
    std::fprintf(stderr, "error: %s\n", exc.what());
    return 2;
  }
}
