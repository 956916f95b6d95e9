// Parity figures and checks, the definitions of runtime/parity.py (design's parity table).
#include "ts2net/parity.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "ts2net/errors.hpp"
#include "ts2net/similarity.hpp"

namespace ts2net {
namespace {

using json = nlohmann::json;

// Row-wise cosine (in double) and absolute errors of one embedding output, over the rows `keep`
// selects (all when empty).
json embedding_figures(const std::vector<float>& ref, const std::vector<float>& out, int64_t dim,
                       const std::vector<bool>& keep = {}) {
  const int64_t rows = int64_t(ref.size()) / dim;
  double cos_min = INFINITY, cos_sum = 0, err_max = 0, err_sum = 0, ref_max = 0;
  int64_t used = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!keep.empty() && !keep[size_t(r)]) continue;
    double dot = 0, na = 0, nb = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const double a = ref[size_t(r * dim + d)], b = out[size_t(r * dim + d)];
      dot += a * b;
      na += a * a;
      nb += b * b;
      err_max = std::max(err_max, std::abs(a - b));
      err_sum += std::abs(a - b);
      ref_max = std::max(ref_max, std::abs(a));
    }
    const double c = dot / std::max(std::sqrt(na) * std::sqrt(nb), 1e-30);
    cos_min = std::min(cos_min, c);
    cos_sum += c;
    ++used;
  }
  return {{"cosine_min", cos_min}, {"cosine_mean", cos_sum / double(used)}, {"max_abs_err", err_max},
          {"mean_abs_err", err_sum / double(used * dim)}, {"reference_max_abs", ref_max}};
}

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(7);
  s << v;
  return s.str();
}

}  // namespace

json ParityReport::to_json() const {
  return {{"precision", precision}, {"text_precision", text_precision}, {"passed", passed()}, {"text_model", text_model}, {"video_model", video_model},
          {"thresholds", thresholds}, {"figures", figures},
          {"failures", failures}, {"notes", notes}};
}

json parity_thresholds(const Bundle& bundle, const std::string& precision, bool openvino_ir) {
  const auto& m = bundle.manifest();
  for (const std::string& key : {openvino_ir ? precision + "_openvino" : precision, precision})
    if (m.contains("parity") && m["parity"].contains(key) && m["parity"][key].is_object() &&
        m["parity"][key].contains("thresholds"))
      return m["parity"][key]["thresholds"];
  if (precision == "fp32")
    return {{"cosine_min", 0.99999}, {"max_abs_err", 1e-4}, {"selection_agreement", 1.0},
            {"similarity_max_abs_err", 1e-3}, {"ranking_identical", 1.0}};
  if (precision == "fp16")
    return {{"cosine_mean", 0.999}, {"cosine_min", 0.99}, {"selection_agreement", 0.98}, {"top1_agreement", 0.98}};
  // BF16 (CPU) and INT8 graphs
  return {{"cosine_mean", 0.995}, {"cosine_min", 0.99}, {"selection_agreement", 0.95}};
}

ParityReport run_parity(const Bundle& bundle, const EncoderOptions& options) {
  ParityReport report;
  report.precision = options.precision;
  report.text_precision = text_precision_for(options);
  const auto ref = bundle.reference({"input_ids", "frames", "frame_mask", "text_embeds", "frame_embeds"});
  const auto& frames = ref.at("frames");
  const auto& ids = ref.at("input_ids");
  const int64_t nv = frames.shape.at(0), T = frames.shape.at(1), nt = ids.shape.at(0);
  const std::string where = bundle.path() + "/reference.npz";

  TextEncoder text(bundle, options);
  VideoEncoder video(bundle, options);
  report.text_model = text.plan().model_file;
  report.video_model = video.plan().model_file;
  const bool ir = report.video_model.size() > 4 && report.video_model.substr(report.video_model.size() - 4) == ".xml";
  report.thresholds = parity_thresholds(bundle, options.precision, ir);
  const auto ids64 = ids.to_int64(where + ":input_ids");
  const auto frames32 = frames.to_float32(where + ":frames");
  const auto mask64 = ref.at("frame_mask").to_int64(where + ":frame_mask");
  const auto text_out = text.encode(ids64.data(), nt);
  const auto video_out = video.encode(frames32.data(), mask64.data(), nv);
  const auto text_ref = ref.at("text_embeds").to_float32(where + ":text_embeds");
  const auto frame_ref = ref.at("frame_embeds").to_float32(where + ":frame_embeds");
  const int64_t D = ref.at("text_embeds").shape.at(1);
  const json& th = report.thresholds;

  auto check_embeddings = [&](const std::string& name, const std::vector<float>& r, const std::vector<float>& o,
                              json figures) {
    if (r.size() != o.size()) {
      report.failures.push_back(name + ": " + std::to_string(o.size()) + " values != reference " + std::to_string(r.size()));
      return;
    }
    if (figures["cosine_min"].get<double>() < th.value("cosine_min", -2.0))
      report.failures.push_back(name + ": cosine min " + fmt(figures["cosine_min"]) + " < " + fmt(th["cosine_min"]));
    if (th.contains("cosine_mean") && figures["cosine_mean"].get<double>() < th["cosine_mean"].get<double>())
      report.failures.push_back(name + ": cosine mean " + fmt(figures["cosine_mean"]) + " < " + fmt(th["cosine_mean"]));
    if (th.contains("max_abs_err") && figures["max_abs_err"].get<double>() > th["max_abs_err"].get<double>())
      report.failures.push_back(name + ": max abs err " + fmt(figures["max_abs_err"]) + " > " + fmt(th["max_abs_err"]));
    report.figures[name] = figures;
  };
  for (auto v : text_out) if (!std::isfinite(v)) { report.failures.push_back("text_embeds: non-finite values"); break; }
  for (auto v : video_out.frame_embeds) if (!std::isfinite(v)) { report.failures.push_back("frame_embeds: non-finite values"); break; }
  check_embeddings("text_embeds", text_ref, text_out, text_out.size() == text_ref.size() ? embedding_figures(text_ref, text_out, D) : json());
  if (video_out.frame_embeds.size() == frame_ref.size()) {
    json f = embedding_figures(frame_ref, video_out.frame_embeds, D);
    std::vector<bool> real(mask64.begin(), mask64.end());
    json r = embedding_figures(frame_ref, video_out.frame_embeds, D, real);
    f["real_frames_cosine_min"] = r["cosine_min"];
    f["real_frames_cosine_mean"] = r["cosine_mean"];
    check_embeddings("frame_embeds", frame_ref, video_out.frame_embeds, f);
  } else {
    check_embeddings("frame_embeds", frame_ref, video_out.frame_embeds, json());
  }

  if (bundle.manifest()["model"].value("token_selection", true)) {
    const auto pref = bundle.reference({"patch_indices"}).at("patch_indices").to_int64(where + ":patch_indices");
    if (pref.size() != video_out.patch_indices.size()) {
      report.failures.push_back("patch_indices: missing or wrong shape");
    } else {
      int64_t differ = 0;
      for (size_t i = 0; i < pref.size(); ++i) differ += pref[i] != video_out.patch_indices[i];
      const double agreement = 1.0 - double(differ) / double(pref.size());
      report.figures["patch_indices"] = {{"agreement", agreement}, {"differing_slots", differ}};
      if (agreement < th.value("selection_agreement", 0.0))
        report.failures.push_back("patch_indices: agreement " + fmt(agreement) + " < " + fmt(th["selection_agreement"]));
    }
  }

  if (report.figures.contains("text_embeds") && report.figures.contains("frame_embeds")) {
    const auto params = bundle.similarity();
    std::vector<uint8_t> mask8(mask64.begin(), mask64.end());
    const auto sim_ref = similarity(text_ref, nt, frame_ref, mask8, nv, T, D, params);
    const auto sim_out = similarity(text_out, nt, video_out.frame_embeds, mask8, nv, T, D, params);
    double err = 0;
    int64_t top1 = 0, identical = 0;
    for (int64_t q = 0; q < nt; ++q) {
      const auto a = ranking(&sim_ref[size_t(q * nv)], nv), b = ranking(&sim_out[size_t(q * nv)], nv);
      top1 += a[0] == b[0];
      identical += a == b;
      for (int64_t v = 0; v < nv; ++v) err = std::max(err, double(std::abs(sim_ref[size_t(q * nv + v)] - sim_out[size_t(q * nv + v)])));
    }
    const double top1_agreement = double(top1) / double(nt), rankings = double(identical) / double(nt);
    report.figures["similarity"] = {{"max_abs_err", err}, {"top1_agreement", top1_agreement}, {"ranking_identical", rankings}};
    if (th.contains("similarity_max_abs_err") && err > th["similarity_max_abs_err"].get<double>())
      report.failures.push_back("similarity: max abs err " + fmt(err) + " > " + fmt(th["similarity_max_abs_err"]));
    if (th.contains("ranking_identical") && rankings < th["ranking_identical"].get<double>())
      report.failures.push_back("similarity: rankings identical for " + fmt(100 * rankings) + "% of texts, expected all");
    if (th.contains("top1_agreement") && top1_agreement < th["top1_agreement"].get<double>())
      report.failures.push_back("similarity: top-1 video identical for " + fmt(100 * top1_agreement) + "% < " +
                                fmt(100 * th["top1_agreement"].get<double>()) + "%");
  }
  static const std::set<std::string> checked = {"cosine_min", "cosine_mean", "max_abs_err", "selection_agreement",
                                                "similarity_max_abs_err", "ranking_identical", "top1_agreement"};
  for (const auto& [key, value] : th.items())
    if (!checked.count(key))
      report.notes.push_back(key + " needs real evaluation data (ts2net parity --csv/--videos), not checked on the "
                             "reference inputs");
  return report;
}

}  // namespace ts2net
