#include "verification.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>

#include "errors.hpp"
#include "rng.hpp"

namespace mpicnn::core {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

std::vector<std::string> fields_of(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> fields;
  for (std::string field; in >> field;) fields.push_back(field);
  return fields;
}

std::optional<int> whole_number(const std::string& text) {
  std::size_t used = 0;
  try {
    const int value = std::stoi(text, &used);
    if (used == text.size() && value >= 0) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Reads "sets pairs" or "pairs" from the header line.
std::pair<int, int> lfw_header(const std::string& line, const std::string& source) {
  const std::vector<std::string> fields = fields_of(line);
  std::optional<int> sets = 1, pairs;
  if (fields.size() == 1) pairs = whole_number(fields[0]);
  if (fields.size() == 2) sets = whole_number(fields[0]), pairs = whole_number(fields[1]);
  if (!sets || !pairs || *sets < 1 || *pairs < 1)
    throw IoError(source + ":1: expected the header 'sets pairs_per_set' (LFW pairs.txt, e.g. '10 300'), got '" + line + "'");
  return {*sets, *pairs};
}

}  // namespace

std::vector<Pair> read_lfw_pairs(std::istream& in, const std::string& source,
                                 const std::function<std::optional<std::uint32_t>(const std::string&, int)>& sample_of) {
  std::string line;
  if (!std::getline(in, line)) throw IoError(source + ": empty, expected LFW's pairs.txt layout");
  const auto [sets, per_set] = lfw_header(line, source);
  std::vector<Pair> pairs;
  int number = 1;
  auto sample = [&](const std::string& name, const std::string& image) {
    const std::optional<int> n = whole_number(image);
    if (!n) throw IoError(source + ":" + std::to_string(number) + ": image number '" + image + "' is not a whole number");
    const std::optional<std::uint32_t> index = sample_of(name, *n);
    if (!index)
      throw IoError(source + ":" + std::to_string(number) + ": no sample for " + name + " image " + image +
                    " in the embeddings");
    return *index;
  };
  for (long i = 0; i < long(sets) * 2 * per_set; ++i) {
    ++number;
    if (!std::getline(in, line))
      throw IoError(source + ": " + std::to_string(i) + " pairs, the header promises " +
                    std::to_string(long(sets) * 2 * per_set));
    const bool same = (i / per_set) % 2 == 0;  // per set: the matched pairs, then the mismatched
    const std::vector<std::string> f = fields_of(line);
    if (same && f.size() != 3)
      throw IoError(source + ":" + std::to_string(number) + ": expected a matched pair 'name n1 n2', got '" + line + "'");
    if (!same && f.size() != 4)
      throw IoError(source + ":" + std::to_string(number) + ": expected a mismatched pair 'name1 n1 name2 n2', got '" + line + "'");
    pairs.push_back(same ? Pair{sample(f[0], f[1]), sample(f[0], f[2]), true}
                         : Pair{sample(f[0], f[1]), sample(f[2], f[3]), false});
  }
  while (std::getline(in, line))
    if (!fields_of(line).empty())
      throw IoError(source + ":" + std::to_string(number + 1) + ": more pairs than the header's " +
                    std::to_string(sets) + " x 2 x " + std::to_string(per_set));
  return pairs;
}

std::vector<Pair> pairs_from_labels(std::span<const std::int32_t> labels, std::uint64_t seed, long negatives) {
  std::vector<Pair> pairs;
  const std::size_t n = labels.size();
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = i + 1; j < n; ++j)
      if (labels[i] == labels[j]) pairs.push_back({std::uint32_t(i), std::uint32_t(j), true});
  const std::size_t positives = pairs.size();
  const std::size_t all_different = n * (n - (n > 0)) / 2 - positives;
  const std::size_t wanted = std::min(negatives < 0 ? positives : std::size_t(negatives), all_different);
  // Drawn in rounds of what is still missing, each round's repeats removed by sorting (a set of
  // millions of pairs would cost more than the rest of an evaluation).
  Rng rng(seed);
  std::vector<std::uint64_t> drawn;  // first << 32 | second, sorted
  while (drawn.size() < wanted) {
    const std::size_t have = drawn.size();
    while (drawn.size() < wanted) {
      std::uint32_t a = std::uint32_t(rng.below(n)), b = std::uint32_t(rng.below(n));
      if (labels[a] == labels[b]) continue;
      if (a > b) std::swap(a, b);
      drawn.push_back(std::uint64_t(a) << 32 | b);
    }
    std::sort(drawn.begin() + long(have), drawn.end());
    std::inplace_merge(drawn.begin(), drawn.begin() + long(have), drawn.end());
    drawn.erase(std::unique(drawn.begin(), drawn.end()), drawn.end());
  }
  for (std::uint64_t key : drawn) pairs.push_back({std::uint32_t(key >> 32), std::uint32_t(key), false});
  for (std::size_t i = pairs.size(); i > 1; --i) std::swap(pairs[i - 1], pairs[rng.below(i)]);
  return pairs;
}

std::vector<double> pair_scores(std::span<const float> embeddings, int dim, std::span<const Pair> pairs) {
  const std::size_t rows = embeddings.size() / std::size_t(dim);
  std::vector<double> scores;
  scores.reserve(pairs.size());
  for (const Pair& p : pairs) {
    if (p.first >= rows || p.second >= rows)
      throw ShapeError("pair (" + std::to_string(p.first) + ", " + std::to_string(p.second) + ") names a sample beyond the " +
                       std::to_string(rows) + " embeddings");
    const float *a = embeddings.data() + std::size_t(p.first) * dim, *b = embeddings.data() + std::size_t(p.second) * dim;
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < dim; ++i) ab += double(a[i]) * b[i], aa += double(a[i]) * a[i], bb += double(b[i]) * b[i];
    scores.push_back(ab / std::max(std::sqrt(aa * bb), 1e-24));
  }
  return scores;
}

RocCurve roc_curve(std::span<const double> scores, const std::vector<bool>& same) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
  const double positives = double(std::count(same.begin(), same.end(), true));
  const double negatives = double(same.size()) - positives;
  RocCurve roc{{0.0}, {0.0}, {kInfinity}};
  double accepted_same = 0, accepted_different = 0;
  for (std::size_t i = 0; i < order.size();) {
    const double threshold = scores[order[i]];
    for (; i < order.size() && scores[order[i]] == threshold; ++i) (same[order[i]] ? accepted_same : accepted_different) += 1;
    roc.false_accept.push_back(negatives > 0 ? accepted_different / negatives : std::nan(""));
    roc.true_accept.push_back(positives > 0 ? accepted_same / positives : std::nan(""));
    roc.thresholds.push_back(threshold);
  }
  return roc;
}

double tar_at_far(const RocCurve& roc, double far) {
  double best = 0;
  for (std::size_t i = 0; i < roc.false_accept.size(); ++i)
    if (roc.false_accept[i] <= far) best = std::max(best, roc.true_accept[i]);
  return best;
}

namespace {

// The trapezoidal area under the ROC points (sklearn's auc(fpr, tpr)).
double area_under(const RocCurve& roc) {
  double area = 0;
  for (std::size_t i = 1; i < roc.false_accept.size(); ++i)
    area += (roc.false_accept[i] - roc.false_accept[i - 1]) * (roc.true_accept[i] + roc.true_accept[i - 1]) / 2;
  return area;
}

// The threshold (among the distinct scores and +inf) of the best accuracy on the pairs outside
// [held_first, held_end); ties go to the largest threshold. `by_score`: every pair, descending.
double best_threshold(std::span<const double> scores, const std::vector<bool>& same, std::span<const std::size_t> by_score,
                      std::size_t held_first, std::size_t held_end) {
  auto trained = [&](std::size_t i) { return i < held_first || i >= held_end; };
  long correct = 0;  // at +inf every pair is called different: the different ones are right
  for (std::size_t i : by_score) correct += trained(i) && !same[i];
  long best = correct;
  double threshold = kInfinity;
  for (std::size_t k = 0; k < by_score.size();) {
    const double t = scores[by_score[k]];
    bool any = false;
    for (; k < by_score.size() && scores[by_score[k]] == t; ++k)
      if (trained(by_score[k])) correct += same[by_score[k]] ? 1 : -1, any = true;
    if (any && correct > best) best = correct, threshold = t;
  }
  return threshold;
}

}  // namespace

FoldAccuracy kfold_accuracy(std::span<const double> scores, const std::vector<bool>& same, int folds) {
  const std::size_t n = scores.size();
  if (folds < 2 || n < std::size_t(folds))
    throw ShapeError(std::to_string(n) + " pairs cannot be split into " + std::to_string(folds) + " folds");
  std::vector<std::size_t> by_score(n);
  std::iota(by_score.begin(), by_score.end(), 0);
  std::sort(by_score.begin(), by_score.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
  FoldAccuracy result;
  std::size_t start = 0;
  for (int f = 0; f < folds; ++f) {
    // sklearn's KFold: the first n % folds folds are one pair longer.
    const std::size_t size = n / std::size_t(folds) + (std::size_t(f) < n % std::size_t(folds) ? 1 : 0);
    const double threshold = best_threshold(scores, same, by_score, start, start + size);
    long correct = 0;
    for (std::size_t i = start; i < start + size; ++i) correct += (scores[i] >= threshold) == same[i];
    result.accuracies.push_back(double(correct) / double(size));
    result.thresholds.push_back(threshold);
    start += size;
  }
  result.mean = std::accumulate(result.accuracies.begin(), result.accuracies.end(), 0.0) / folds;
  double squares = 0;
  for (double a : result.accuracies) squares += (a - result.mean) * (a - result.mean);
  result.std = std::sqrt(squares / folds);
  return result;
}

Identification identify(std::span<const float> gallery, std::span<const std::int32_t> gallery_labels,
                        std::span<const float> probes, std::span<const std::int32_t> probe_labels, int dim) {
  std::vector<std::int32_t> identities(gallery_labels.begin(), gallery_labels.end());
  std::sort(identities.begin(), identities.end());
  identities.erase(std::unique(identities.begin(), identities.end()), identities.end());
  std::vector<Pair> pairs(gallery_labels.size());
  std::vector<float> both(gallery.begin(), gallery.end());
  both.insert(both.end(), probes.begin(), probes.end());
  Identification result;
  std::vector<double> best(identities.size());
  for (std::size_t p = 0; p < probe_labels.size(); ++p) {
    for (std::size_t g = 0; g < pairs.size(); ++g) pairs[g] = {std::uint32_t(g), std::uint32_t(pairs.size() + p), false};
    const std::vector<double> scores = pair_scores(both, dim, pairs);
    std::fill(best.begin(), best.end(), -kInfinity);
    for (std::size_t g = 0; g < pairs.size(); ++g) {
      const std::size_t k = std::size_t(std::lower_bound(identities.begin(), identities.end(), gallery_labels[g]) - identities.begin());
      best[k] = std::max(best[k], scores[g]);
    }
    const auto own = std::lower_bound(identities.begin(), identities.end(), probe_labels[p]);
    if (own == identities.end() || *own != probe_labels[p]) continue;  // not in the gallery: a miss
    const double mine = best[std::size_t(own - identities.begin())];
    const long above = std::count_if(best.begin(), best.end(), [&](double s) { return s > mine; });
    result.top1 += above < 1, result.top5 += above < 5;
  }
  if (!probe_labels.empty()) result.top1 /= double(probe_labels.size()), result.top5 /= double(probe_labels.size());
  return result;
}

std::vector<std::pair<std::string, double>> verification_metrics(std::span<const double> scores,
                                                                 const std::vector<bool>& same) {
  const FoldAccuracy folds = kfold_accuracy(scores, same);
  const RocCurve roc = roc_curve(scores, same);
  double threshold = 0;
  for (double t : folds.thresholds) threshold += t / double(folds.thresholds.size());
  const std::vector<std::string>& names = verification_metric_names();
  const double values[] = {folds.mean, folds.std, threshold, area_under(roc), tar_at_far(roc, 1e-2), tar_at_far(roc, 1e-3)};
  std::vector<std::pair<std::string, double>> metrics;
  for (std::size_t i = 0; i < names.size(); ++i) metrics.emplace_back(names[i], values[i]);
  return metrics;
}

const std::vector<std::string>& verification_metric_names() {
  static const std::vector<std::string> names = {"accuracy", "accuracy_std", "threshold", "auc", "tar_at_far_1e-2",
                                                 "tar_at_far_1e-3"};
  return names;
}

std::vector<std::pair<std::string, double>> label_pair_verification(std::span<const float> embeddings, int dim,
                                                                    std::span<const std::int32_t> labels,
                                                                    std::uint64_t seed) {
  const std::vector<Pair> pairs = pairs_from_labels(labels, seed);
  if (pairs.size() < 10) return {};
  std::vector<bool> same(pairs.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) same[i] = pairs[i].same;
  return verification_metrics(pair_scores(embeddings, dim, pairs), same);
}

}  // namespace mpicnn::core
