// FFmpeg decoding + the official sampling rule and per-frame transform (see video.hpp).
#include "ts2net/video.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <memory>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}

namespace ts2net {
namespace {

std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof(buf));
  return std::string(buf) + " (" + std::to_string(code) + ")";
}

double to_double(AVRational r) { return r.num && r.den ? double(r.num) / double(r.den) : 0.0; }

struct Container {
  AVFormatContext* fmt = nullptr;
  int stream = -1;
  ~Container() { if (fmt) avformat_close_input(&fmt); }
};

// Open a container and its first video stream; every failure names the file (as runtime/video.py).
std::unique_ptr<Container> open_container(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw VideoDecodeError(path, "file not found");
  if (!S_ISREG(st.st_mode)) throw VideoDecodeError(path, "not a regular file");
  if (st.st_size == 0) throw VideoDecodeError(path, "file is empty (0 bytes)");
  auto c = std::make_unique<Container>();
  int ret = avformat_open_input(&c->fmt, path.c_str(), nullptr, nullptr);
  if (ret < 0) { c->fmt = nullptr; throw VideoDecodeError(path, "cannot open container (" + av_error(ret) + ")"); }
  ret = avformat_find_stream_info(c->fmt, nullptr);
  if (ret < 0) throw VideoDecodeError(path, "cannot read stream information (" + av_error(ret) + ")");
  for (unsigned i = 0; i < c->fmt->nb_streams; ++i)
    if (c->fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO) { c->stream = int(i); break; }
  if (c->stream < 0) throw VideoDecodeError(path, "no video stream");
  // FFmpeg opens a still image (a PNG or JPEG renamed .mp4) through an image demuxer as a one-frame
  // stream, and a single-frame GIF through `gif`; either would be ranked like a video.
  const std::string demuxer = c->fmt->iformat->name;
  const bool image_demuxer = (demuxer.size() > 5 && demuxer.compare(demuxer.size() - 5, 5, "_pipe") == 0) ||
                             demuxer == "image2" || demuxer == "image2pipe";
  if (image_demuxer || (demuxer == "gif" && c->fmt->streams[c->stream]->nb_frames <= 1)) {
    const AVCodecDescriptor* d = avcodec_descriptor_get(c->fmt->streams[c->stream]->codecpar->codec_id);
    throw VideoDecodeError(path, std::string("a still image (") + (d ? d->name : "image") +
                                     "), not a video: FFmpeg reads it as a one-frame stream, which would be indexed "
                                     "and ranked like a video; convert it to a video or remove it");
  }
  return c;
}

// fps and frame count from the same FFmpeg fields PyAV exposes (average_rate, guessed_rate,
// base_rate, 1/time_base; nb_frames, else round(duration * fps)).
VideoInfo info_of(const Container& c, const std::string& path) {
  AVStream* s = c.fmt->streams[c.stream];
  double fps = to_double(s->avg_frame_rate);
  if (fps == 0) fps = to_double(av_guess_frame_rate(c.fmt, s, nullptr));
  if (fps == 0) fps = to_double(s->r_frame_rate);
  if (fps == 0 && s->time_base.num && s->time_base.den) fps = double(s->time_base.den) / double(s->time_base.num);
  VideoInfo info;
  info.path = path;
  info.fps = fps;
  double seconds = c.fmt->duration != AV_NOPTS_VALUE ? double(c.fmt->duration) / 1e6 : 0.0;
  if (seconds <= 0 && s->duration != AV_NOPTS_VALUE && s->duration > 0 && s->time_base.den)
    seconds = double(s->duration) * to_double(s->time_base);
  info.duration_frames = seconds > 0 ? int64_t(std::floor(seconds * fps + 0.5)) : 0;
  if (s->nb_frames > 0) {
    info.frame_count = s->nb_frames;
    info.frame_count_source = "stream";
  } else {
    info.frame_count = info.duration_frames;
    info.frame_count_source = info.frame_count > 0 ? "duration" : "unknown";
  }
  info.width = s->codecpar->width;
  info.height = s->codecpar->height;
  const AVCodecDescriptor* d = avcodec_descriptor_get(s->codecpar->codec_id);
  info.codec = d ? d->name : "unknown";
  return info;
}

// The swscale colour matrix for a frame's tagged colour space (untagged: BT.601, swscale's default).
int sws_colorspace(AVColorSpace cs) {
  switch (cs) {
    case AVCOL_SPC_BT709: return SWS_CS_ITU709;
    case AVCOL_SPC_FCC: return SWS_CS_FCC;
    case AVCOL_SPC_SMPTE240M: return SWS_CS_SMPTE240M;
    case AVCOL_SPC_BT2020_NCL:
    case AVCOL_SPC_BT2020_CL: return SWS_CS_BT2020;
    default: return SWS_CS_DEFAULT;
  }
}

bool full_range_format(int fmt) {
  return fmt == AV_PIX_FMT_YUVJ420P || fmt == AV_PIX_FMT_YUVJ422P || fmt == AV_PIX_FMT_YUVJ444P ||
         fmt == AV_PIX_FMT_YUVJ440P || fmt == AV_PIX_FMT_YUVJ411P;
}

// Decoded frame -> packed RGB24 the way PyAV's frame.to_ndarray(format="rgb24") asks swscale for
// it: same size, SWS_BILINEAR, the frame's colour matrix and range.
RgbImage to_rgb(const AVFrame* frame, const std::string& path) {
  const AVPixelFormat src_fmt = AVPixelFormat(frame->format);
  RgbImage img;
  img.width = frame->width;
  img.height = frame->height;
  img.pixels.resize(size_t(img.width) * size_t(img.height) * 3);
  SwsContext* sws = sws_getContext(frame->width, frame->height, src_fmt, frame->width, frame->height,
                                   AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr);
  if (!sws) throw VideoDecodeError(path, std::string("cannot convert pixel format ") +
                                             (av_get_pix_fmt_name(src_fmt) ? av_get_pix_fmt_name(src_fmt) : "?") + " to RGB");
  const int* coeffs = sws_getCoefficients(sws_colorspace(frame->colorspace));
  const int src_range = frame->color_range == AVCOL_RANGE_JPEG || full_range_format(src_fmt) ? 1 : 0;
  sws_setColorspaceDetails(sws, coeffs, src_range, coeffs, 1, 0, 1 << 16, 1 << 16);
  uint8_t* dst[4] = {img.pixels.data(), nullptr, nullptr, nullptr};
  int dst_stride[4] = {img.width * 3, 0, 0, 0};
  sws_scale(sws, frame->data, frame->linesize, 0, frame->height, dst, dst_stride);
  sws_freeContext(sws);
  return img;
}

}  // namespace

void check_frame_count(const VideoInfo& info, int64_t decoded) {
  if (info.frame_count_source != "stream" || decoded >= info.frame_count) return;
  const int64_t expected = info.duration_frames > 0 ? std::min(info.frame_count, info.duration_frames) : info.frame_count;
  if (decoded < expected - kFrameCountTolerance)
    throw VideoDecodeError(info.path, "the container states " + std::to_string(info.frame_count) + " frames but only " +
                                          std::to_string(decoded) +
                                          " decode: the file is truncated or damaged (copy or download it again)");
}

std::string decoder_versions() {
  auto v = [](unsigned x) {
    return std::to_string(AV_VERSION_MAJOR(x)) + "." + std::to_string(AV_VERSION_MINOR(x)) + "." +
           std::to_string(AV_VERSION_MICRO(x));
  };
  return "libavcodec=" + v(avcodec_version()) + ",libavformat=" + v(avformat_version()) +
         ",libavutil=" + v(avutil_version()) + ",libswscale=" + v(swscale_version());
}

void set_decoder_log(bool enabled) { av_log_set_level(enabled ? AV_LOG_WARNING : AV_LOG_QUIET); }

std::vector<int64_t> sample_frame_numbers(int64_t frame_count, double fps, int max_frames) {
  const int64_t step = int64_t(fps);
  if (step < 1) throw Error("fps must be >= 1 (int(fps) is the sampling step), got " + std::to_string(fps));
  if (max_frames < 1) throw Error("max_frames must be >= 1, got " + std::to_string(max_frames));
  if (frame_count < 0) frame_count = 0;
  const int64_t total = (frame_count + step - 1) / step;
  std::vector<int64_t> frames;
  for (int64_t s = 0; s <= total; ++s)
    if (s * step < frame_count) frames.push_back(s * step);
  const int64_t n = int64_t(frames.size());
  if (n > max_frames) {
    // np.linspace(0, n - 1, max_frames).astype(int): i * step in double, the last exactly n - 1
    std::vector<int64_t> kept;
    const double delta = double(n - 1);
    const double div = double(max_frames - 1);
    for (int i = 0; i < max_frames; ++i) {
      double y = max_frames > 1 ? double(i) * (delta / div) : 0.0;
      if (i == max_frames - 1 && max_frames > 1) y = delta;
      kept.push_back(frames[size_t(int64_t(y))]);
    }
    frames = kept;
  }
  return frames;
}

void preprocess_frame(const RgbImage& rgb, int size, const std::array<float, 3>& mean,
                      const std::array<float, 3>& std, float* out) {
  const RgbImage* img = &rgb;
  RgbImage resized;
  int h = rgb.height, w = rgb.width;
  if (std::min(h, w) != size) {
    int new_w, new_h;
    // int(size * long / short) in double, as Python computes it
    if (w < h) { new_w = size; new_h = int(double(size) * double(h) / double(w)); }
    else { new_w = int(double(size) * double(w) / double(h)); new_h = size; }
    resized = resize_bicubic(rgb, new_w, new_h);
    img = &resized;
    h = new_h;
    w = new_w;
  }
  if (h < size || w < size) throw Error("frame of " + std::to_string(w) + "x" + std::to_string(h) + " is smaller than the crop");
  const int top = int((h - size + 1) * 0.5);
  const int left = int((w - size + 1) * 0.5);
  const float inv = 255.0f;  // a division, like numpy (never a reciprocal multiply)
  for (int c = 0; c < 3; ++c) {
    float* plane = out + size_t(c) * size_t(size) * size_t(size);
    for (int y = 0; y < size; ++y) {
      const uint8_t* row = &img->pixels[(size_t(top + y) * size_t(w) + size_t(left)) * 3];
      for (int x = 0; x < size; ++x) {
        // numpy's order, in float32: (float(p) / 255 - mean) / std
        const float scaled = float(row[size_t(x) * 3 + size_t(c)]) / inv;
        plane[size_t(y) * size_t(size) + size_t(x)] = (scaled - mean[size_t(c)]) / std[size_t(c)];
      }
    }
  }
}

VideoInfo VideoReader::probe(const std::string& path) const {
  auto c = open_container(path);
  return info_of(*c, path);
}

namespace {

// One sequential pass over an open container (its first packets were read by
// avformat_find_stream_info and are returned again by av_read_frame).
std::vector<std::pair<int64_t, RgbImage>> decode_open(Container* c, const std::string& path,
                                                      const std::set<int64_t>& wanted, int64_t& count) {
  AVStream* s = c->fmt->streams[c->stream];
  const AVCodec* codec = avcodec_find_decoder(s->codecpar->codec_id);
  if (!codec) throw VideoDecodeError(path, "no decoder for codec '" + info_of(*c, path).codec + "' in this FFmpeg build");
  std::unique_ptr<AVCodecContext, void (*)(AVCodecContext*)> ctx(avcodec_alloc_context3(codec),
                                                                 [](AVCodecContext* p) { avcodec_free_context(&p); });
  int ret = avcodec_parameters_to_context(ctx.get(), s->codecpar);
  if (ret < 0) throw VideoDecodeError(path, "bad codec parameters (" + av_error(ret) + ")");
  ctx->pkt_timebase = s->time_base;
  // Slice threading only: frame threading reports errors late, so a truncated file could pass as a short one.
  ctx->thread_type = FF_THREAD_SLICE;
  ret = avcodec_open2(ctx.get(), codec, nullptr);
  if (ret < 0) throw VideoDecodeError(path, "cannot open the decoder (" + av_error(ret) + ")");

  std::unique_ptr<AVPacket, void (*)(AVPacket*)> packet(av_packet_alloc(), [](AVPacket* p) { av_packet_free(&p); });
  std::unique_ptr<AVFrame, void (*)(AVFrame*)> frame(av_frame_alloc(), [](AVFrame* p) { av_frame_free(&p); });
  std::vector<std::pair<int64_t, RgbImage>> kept;
  count = 0;
  auto receive_all = [&]() {
    while (true) {
      int r = avcodec_receive_frame(ctx.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) throw VideoDecodeError(path, "decoding failed after " + std::to_string(count) + " frames (" + av_error(r) + ")");
      if (wanted.count(count)) kept.emplace_back(count, to_rgb(frame.get(), path));
      ++count;
      av_frame_unref(frame.get());
    }
  };
  while (true) {
    ret = av_read_frame(c->fmt, packet.get());
    if (ret == AVERROR(EAGAIN)) continue;
    if (ret == AVERROR_EOF) break;
    if (ret < 0) throw VideoDecodeError(path, "decoding failed after " + std::to_string(count) + " frames (" + av_error(ret) + ")");
    if (packet->stream_index == c->stream) {
      int r = avcodec_send_packet(ctx.get(), packet.get());
      av_packet_unref(packet.get());
      if (r < 0 && r != AVERROR(EAGAIN))
        throw VideoDecodeError(path, "decoding failed after " + std::to_string(count) + " frames (" + av_error(r) + ")");
      receive_all();
    } else {
      av_packet_unref(packet.get());
    }
  }
  ret = avcodec_send_packet(ctx.get(), nullptr);  // drain the decoder's delayed frames
  if (ret < 0 && ret != AVERROR_EOF)
    throw VideoDecodeError(path, "decoding failed after " + std::to_string(count) + " frames (" + av_error(ret) + ")");
  receive_all();
  return kept;
}

}  // namespace

std::vector<std::pair<int64_t, RgbImage>> VideoReader::decode(const std::string& path, const std::set<int64_t>& wanted,
                                                              int64_t& count) const {
  auto c = open_container(path);
  return decode_open(c.get(), path, wanted, count);
}

Clip VideoReader::load(const std::string& path) const {
  const int T = pre_.max_frames, S = pre_.image_size;
  if (T < 1 || S < 1) throw Error("max_frames and image_size must be >= 1");
  auto container = open_container(path);  // probed and decoded through one open
  const VideoInfo info = info_of(*container, path);
  if (int64_t(info.fps) < 1) throw VideoDecodeError(path, "frame rate " + std::to_string(info.fps) + " is below 1 fps (int(fps) == 0)");
  const auto predicted = sample_frame_numbers(info.frame_count, info.fps, T);
  int64_t count = 0;
  auto kept = decode_open(container.get(), path, std::set<int64_t>(predicted.begin(), predicted.end()), count);
  container.reset();
  if (count == 0) throw VideoDecodeError(path, "no decodable frames");
  check_frame_count(info, count);
  const auto chosen = sample_frame_numbers(count, info.fps, T);
  auto have_all = [&](const std::vector<std::pair<int64_t, RgbImage>>& k) {
    std::set<int64_t> got;
    for (const auto& p : k) got.insert(p.first);
    for (auto f : chosen) if (!got.count(f)) return false;
    return true;
  };
  if (!have_all(kept)) {  // the metadata count was wrong: decode again, knowing better
    int64_t count2 = 0;
    kept = decode(path, std::set<int64_t>(chosen.begin(), chosen.end()), count2);
    if (count2 != count || !have_all(kept)) throw VideoDecodeError(path, "decoding is not repeatable (frame count changed)");
  }
  Clip clip;
  const size_t frame_size = size_t(3) * size_t(S) * size_t(S);
  clip.frames.assign(size_t(T) * frame_size, 0.0f);
  clip.mask.assign(size_t(T), 0);
  for (size_t i = 0; i < chosen.size(); ++i) {
    for (const auto& [number, rgb] : kept)
      if (number == chosen[i]) {
        preprocess_frame(rgb, S, pre_.mean, pre_.std, clip.frames.data() + i * frame_size);
        break;
      }
    clip.mask[i] = 1;
    clip.frame_numbers.push_back(chosen[i]);
  }
  return clip;
}

}  // namespace ts2net
