// ts2net-cpp: a bundle from C++ (parity, frames, encode, rank). Exit 0 ok / parity passed,
// 1 parity failed, 2 error (the message names the file, field or shape and the fix).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <fcntl.h>
#include <chrono>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <openvino/openvino.hpp>

#include "ts2net/ts2net.hpp"

using json = nlohmann::json;
using namespace ts2net;

namespace {

const char* kUsage =
    "usage:\n"
    "  ts2net-cpp parity BUNDLE [--precision P] [--text-precision P] [--threads N] [--json OUT.json]\n"
    "  ts2net-cpp frames BUNDLE VIDEO OUT.npy [--image-size S] [--max-frames T]\n"
    "  ts2net-cpp encode BUNDLE OUT_DIR VIDEO... [--list FILE] [--skip-bad] [--precision P] [--batch N]\n"
    "                    [--threads N] [--decode-threads N]\n"
    "  ts2net-cpp rank BUNDLE OUT_DIR --ids IDS.npy [-k K] [--precision P] [--threads N]\n"
    "precisions: the graph precisions the bundle lists (fp32, fp16, int8, ...) and bf16 (the fp32 graph\n"
    "with OpenVINO's bf16 inference hint, where the CPU has native bf16). Token ids come from the Python\n"
    "tokenizer (docs/cpp.md). The text graph of a bf16 / int8 run is fp32 unless --text-precision P says\n"
    "otherwise. TS2NET_FFMPEG_LOG=1 shows FFmpeg's own log lines.\n";

struct UsageError : Error {
  using Error::Error;
};

// Positional arguments and --options of one command; flags listed in `flags` take no value.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  Args(int argc, char** argv, int first, const std::vector<std::string>& known, const std::vector<std::string>& flags) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && std::isdigit(static_cast<unsigned char>(a[1])))) {
        if (std::find(known.begin(), known.end(), a) == known.end()) throw UsageError("unknown option " + a);
        if (std::find(flags.begin(), flags.end(), a) != flags.end()) { options[a] = "1"; continue; }
        if (i + 1 >= argc) throw UsageError("option " + a + " needs a value");
        options[a] = argv[++i];
      } else {
        positional.push_back(a);
      }
    }
  }
  std::string get(const std::string& k, const std::string& fallback) const {
    auto it = options.find(k);
    return it == options.end() ? fallback : it->second;
  }
  int get_int(const std::string& k, int fallback, int minimum) const {
    auto it = options.find(k);
    if (it == options.end()) return fallback;
    try {
      size_t used = 0;
      int v = std::stoi(it->second, &used);
      if (used != it->second.size() || v < minimum) throw std::invalid_argument("");
      return v;
    } catch (const std::exception&) {
      throw UsageError(k + " " + it->second + ": expected an integer >= " + std::to_string(minimum));
    }
  }
  bool flag(const std::string& k) const { return options.count(k) > 0; }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

EncoderOptions encoder_options(const Args& args) {
  EncoderOptions o;
  o.precision = args.get("--precision", "fp32");
  o.text_precision = args.get("--text-precision", "");
  o.threads = args.get_int("--threads", 0, 0);
  return o;
}

bool is_dir(const std::string& p) { struct stat s; return ::stat(p.c_str(), &s) == 0 && S_ISDIR(s.st_mode); }

// ------------------------------------------------------------------------------------ parity
int cmd_parity(const Args& args) {
  if (args.positional.size() != 1) throw UsageError("parity takes exactly one BUNDLE");
  Bundle bundle = Bundle::open(args.positional[0]);
  const auto t0 = std::chrono::steady_clock::now();
  ParityReport report = run_parity(bundle, encoder_options(args));
  json out = report.to_json();
  out["bundle"] = bundle.path();
  out["backend"] = "openvino-cpp " + std::string(ov::get_openvino_version().buildNumber);
  out["seconds"] = seconds_since(t0);
  std::cout << "parity " << bundle.path() << " (" << report.precision
            << (report.text_precision != report.precision ? ", text graph " + report.text_precision : "")
            << ", OpenVINO C++): "
            << (report.passed() ? "PASS" : "FAIL") << "\n  graphs: " << report.text_model << ", " << report.video_model
            << "\n";
  for (const auto& [output, figures] : report.figures.items())
    for (const auto& [name, value] : figures.items()) {
      char line[160];
      std::snprintf(line, sizeof(line), "  %-14s %-24s %.12g\n", output.c_str(), name.c_str(), value.get<double>());
      std::cout << line;
    }
  for (const auto& f : report.failures) std::cout << "  FAIL: " << f << "\n";
  for (const auto& n : report.notes) std::cout << "  note: " << n << "\n";
  if (args.flag("--json")) write_text_file(args.get("--json", ""), out.dump(2) + "\n");
  return report.passed() ? 0 : 1;
}

// ------------------------------------------------------------------------------------ frames
int cmd_frames(const Args& args) {
  if (args.positional.size() != 3) throw UsageError("frames takes BUNDLE VIDEO OUT.npy");
  Bundle bundle = Bundle::open(args.positional[0], /*verify_all=*/false);
  Preprocessing pre = bundle.preprocessing();
  pre.image_size = args.get_int("--image-size", pre.image_size, 1);
  pre.max_frames = args.get_int("--max-frames", pre.max_frames, 1);
  VideoReader reader(pre);
  Clip clip = reader.load(args.positional[1]);
  std::string out = args.positional[2];
  std::string mask_path = (out.size() > 4 && out.substr(out.size() - 4) == ".npy" ? out.substr(0, out.size() - 4) : out) + ".mask.npy";
  const int64_t T = pre.max_frames, S = pre.image_size;
  write_npy(out, {T, 3, S, S}, clip.frames);
  write_npy(mask_path, {T}, std::vector<uint8_t>(clip.mask.begin(), clip.mask.end()));
  json info = {{"frames", out}, {"mask", mask_path}, {"valid_frames", clip.frame_numbers.size()},
               {"frame_numbers", clip.frame_numbers}};
  std::cout << info.dump() << "\n";
  return 0;
}

// ------------------------------------------------------------------------------------ encode
std::vector<std::string> read_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the video list");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

int cmd_encode(const Args& args) {
  if (args.positional.size() < 2) throw UsageError("encode takes BUNDLE OUT_DIR VIDEO...");
  std::vector<std::string> videos(args.positional.begin() + 2, args.positional.end());
  if (args.flag("--list")) for (auto& v : read_list(args.get("--list", ""))) videos.push_back(v);
  if (videos.empty()) throw UsageError("encode: no videos given (VIDEO... or --list FILE)");
  const std::string out_dir = args.positional[1];
  const int batch = args.get_int("--batch", 8, 1);
  const int decode_threads = args.get_int("--decode-threads", 1, 1);
  Bundle bundle = Bundle::open(args.positional[0]);
  if (!is_dir(out_dir) && ::mkdir(out_dir.c_str(), 0777) != 0)
    throw Error(out_dir + ": cannot create the output folder: " + std::strerror(errno));
  // One writer per output folder: a second encode into it fails instead of mixing the files.
  const std::string lock_path = out_dir + "/.ts2net-cpp.lock";
  const int lock_fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR, 0666);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    throw Error(out_dir + ": another ts2net-cpp encode is writing this folder (lock " + lock_path +
                "); wait for it or choose another OUT_DIR");
  const bool skip_bad = args.flag("--skip-bad");
  const auto t_load = std::chrono::steady_clock::now();
  VideoEncoder encoder(bundle, encoder_options(args));
  const double load_seconds = seconds_since(t_load);
  VideoReader reader = VideoReader::for_bundle(bundle);
  const int64_t T = bundle.max_frames(), D = bundle.embed_dim(), S = bundle.image_size();
  const size_t clip_size = size_t(T) * 3 * size_t(S) * size_t(S);

  std::vector<std::string> kept;
  json skipped = json::array();
  std::vector<float> embeds;
  std::vector<uint8_t> masks;
  double decode_seconds = 0, encode_seconds = 0;
  for (size_t start = 0; start < videos.size(); start += size_t(batch)) {
    const size_t n = std::min(size_t(batch), videos.size() - start);
    std::vector<Clip> clips(n);
    std::vector<std::string> errors(n);
    const auto t0 = std::chrono::steady_clock::now();
    auto work = [&](size_t first, size_t step) {
      for (size_t i = first; i < n; i += step) {
        try {
          clips[i] = reader.load(videos[start + i]);
        } catch (const VideoDecodeError& exc) {
          errors[i] = exc.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < decode_threads; ++w) pool.emplace_back(work, size_t(w), size_t(decode_threads));
    work(0, size_t(decode_threads));
    for (auto& t : pool) t.join();
    decode_seconds += seconds_since(t0);
    std::vector<float> frames;
    std::vector<int64_t> mask;
    frames.reserve(n * clip_size);
    for (size_t i = 0; i < n; ++i) {
      if (!errors[i].empty()) {
        if (!skip_bad) throw Error(errors[i] + " (pass --skip-bad to list bad videos in videos.json and go on)");
        // the reason without the "cannot decode video 'PATH': " prefix, as runtime/encoder.py lists it
        const std::string prefix = "cannot decode video '" + videos[start + i] + "': ";
        skipped.push_back({{"path", videos[start + i]},
                           {"reason", errors[i].rfind(prefix, 0) == 0 ? errors[i].substr(prefix.size()) : errors[i]}});
        continue;
      }
      frames.insert(frames.end(), clips[i].frames.begin(), clips[i].frames.end());
      mask.insert(mask.end(), clips[i].mask.begin(), clips[i].mask.end());
      kept.push_back(videos[start + i]);
    }
    const int64_t m = int64_t(mask.size()) / T;
    if (m == 0) continue;
    const auto t1 = std::chrono::steady_clock::now();
    VideoEmbeddings e = encoder.encode(frames.data(), mask.data(), m);
    encode_seconds += seconds_since(t1);
    for (size_t i = 0; i < e.frame_embeds.size(); ++i)
      if (!std::isfinite(e.frame_embeds[i]))
        throw Error("the video graph gave non-finite embeddings for " + kept[kept.size() - size_t(m) + i / size_t(T * D)] +
                    " (precision " + encoder.plan().graph_precision + ", hint " + encoder.plan().hint +
                    "); check the bundle with ts2net-cpp parity");
    embeds.insert(embeds.end(), e.frame_embeds.begin(), e.frame_embeds.end());
    for (auto v : mask) masks.push_back(uint8_t(v));
  }
  const int64_t N = int64_t(kept.size());
  write_npy(out_dir + "/frame_embeds.npy", {N, T, D}, embeds);
  write_npy(out_dir + "/frame_mask.npy", {N, T}, masks);
  json listing = {
      {"bundle", bundle.path()}, {"precision", encoder_options(args).precision}, {"graph", encoder.plan().graph_precision},
      {"inference_precision_hint", encoder.plan().hint}, {"videos", kept}, {"skipped", skipped},
      {"preprocessing", {{"rules", kPreprocessingRulesVersion}, {"reader", "ts2net-cpp"}, {"ffmpeg", decoder_versions()}}},
      {"timing", {{"videos_encoded", N}, {"videos_given", videos.size()}, {"batch", batch},
                  {"decode_threads", decode_threads}, {"model_compile_seconds", load_seconds},
                  {"decode_preprocess_seconds", decode_seconds}, {"encode_seconds", encode_seconds},
                  {"decode_preprocess_ms_per_video", videos.empty() ? 0.0 : 1e3 * decode_seconds / double(videos.size())},
                  {"encode_ms_per_video", N ? 1e3 * encode_seconds / double(N) : 0.0}}}};
  write_text_file(out_dir + "/videos.json", listing.dump(2) + "\n");
  std::cout << "encoded " << N << " videos into " << out_dir << " (" << skipped.size() << " skipped); decode+preprocess "
            << decode_seconds << " s, encode " << encode_seconds << " s\n";
  return 0;
}

// ------------------------------------------------------------------------------------ rank
int cmd_rank(const Args& args) {
  if (args.positional.size() != 2 || !args.flag("--ids")) throw UsageError("rank takes BUNDLE OUT_DIR --ids IDS.npy");
  Bundle bundle = Bundle::open(args.positional[0]);
  const std::string dir = args.positional[1];
  const int k = args.get_int("-k", 10, 1);
  const NpyArray embeds = read_npy(dir + "/frame_embeds.npy");
  const NpyArray mask = read_npy(dir + "/frame_mask.npy");
  json listing;
  try {
    std::ifstream in(dir + "/videos.json");
    listing = json::parse(in);
  } catch (const std::exception& exc) {
    throw Error(dir + "/videos.json: not readable JSON (" + std::string(exc.what()) + "); run ts2net-cpp encode first");
  }
  const NpyArray ids = read_npy(args.get("--ids", ""));
  const int64_t W = bundle.max_words(), D = bundle.embed_dim();
  if (ids.shape.size() != 2 || ids.shape[1] != W)
    throw Error(args.get("--ids", "") + ": token ids must be [queries, " + std::to_string(W) + "] (max_words), got " + ids.shape_str());
  if (embeds.shape.size() != 3 || embeds.shape[2] != D || mask.shape.size() != 2 || mask.shape[0] != embeds.shape[0] ||
      mask.shape[1] != embeds.shape[1] || int64_t(listing["videos"].size()) != embeds.shape[0])
    throw Error(dir + ": frame_embeds " + embeds.shape_str() + ", frame_mask " + mask.shape_str() + " and videos.json (" +
                std::to_string(listing["videos"].size()) + " videos) do not match this bundle (embed_dim " +
                std::to_string(D) + "); re-run ts2net-cpp encode");
  const int64_t Q = ids.shape[0], N = embeds.shape[0], T = embeds.shape[1];
  TextEncoder text(bundle, encoder_options(args));
  const auto ids64 = ids.to_int64(args.get("--ids", ""));
  const auto text_embeds = text.encode(ids64.data(), Q);
  const auto m64 = mask.to_int64(dir + "/frame_mask.npy");
  const auto scores = similarity(text_embeds, Q, embeds.to_float32(dir + "/frame_embeds.npy"),
                                 std::vector<uint8_t>(m64.begin(), m64.end()), N, T, D, bundle.similarity());
  json out = {{"bundle", bundle.path()}, {"videos", N}, {"queries", json::array()}};
  for (int64_t q = 0; q < Q; ++q) {
    const auto order = ranking(&scores[size_t(q * N)], N);
    json ranked = json::array();
    for (int64_t r = 0; r < std::min<int64_t>(k, N); ++r)
      ranked.push_back({{"index", order[size_t(r)]}, {"video", listing["videos"][size_t(order[size_t(r)])]},
                        {"score", scores[size_t(q * N + order[size_t(r)])]}});
    out["queries"].push_back({{"query", q}, {"ranking", ranked}});
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  // One-line errors: FFmpeg's own log only when asked for (TS2NET_FFMPEG_LOG=1).
  set_decoder_log(std::getenv("TS2NET_FFMPEG_LOG") != nullptr && std::string(std::getenv("TS2NET_FFMPEG_LOG")) == "1");
  const std::vector<std::string> enc = {"--precision", "--threads"};
  try {
    if (command == "parity") return cmd_parity(Args(argc, argv, 2, {"--precision", "--text-precision", "--threads", "--json"}, {}));
    if (command == "frames") return cmd_frames(Args(argc, argv, 2, {"--image-size", "--max-frames"}, {}));
    if (command == "encode")
      return cmd_encode(Args(argc, argv, 2, {"--precision", "--text-precision", "--threads", "--batch", "--skip-bad", "--list", "--decode-threads"},
                             {"--skip-bad"}));
    if (command == "rank") return cmd_rank(Args(argc, argv, 2, {"--precision", "--text-precision", "--threads", "--ids", "-k"}, {}));
    throw UsageError("unknown command '" + command + "'");
  } catch (const UsageError& exc) {
    std::cerr << "ts2net-cpp: " << exc.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& exc) {
    std::cerr << "ts2net-cpp " << command << ": error: " << exc.what() << "\n";
    return 2;
  }
}
