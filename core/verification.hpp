#pragma once
// Verification and identification metrics on embeddings (face recognition, issue 18), as the LFW
// protocol and insightface's evaluation compute them, checked against scikit-learn:
//   pairs: from a file in LFW's pairs.txt layout, or generated from labels;
//   scores: cosine similarity of the two embeddings; "same" is predicted when score >= threshold;
//   10-fold accuracy: contiguous folds as sklearn's KFold(n_splits=10, shuffle=False) (for LFW's
//     pairs.txt these are its 10 sets), the threshold that maximises the accuracy on the other nine
//     folds (among the distinct scores and +inf; the largest of equally good ones), the mean and
//     the (population) standard deviation of the held-out folds' accuracies;
//   ROC: sklearn's roc_curve(drop_intermediate=False); AUC: roc_auc_score (core/metrics.hpp);
//   TAR at FAR f: the largest true-accept rate of an ROC point whose false-accept rate is <= f;
//   identification: each probe against a gallery of labelled embeddings, the gallery identities
//     ranked by their most similar image; top-k when the probe's identity is among the first k
//     (sklearn's top_k_accuracy_score on those per-identity scores).
// No file is opened here: the caller hands pairs files over as streams.
#include <cstdint>
#include <functional>
#include <istream>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace mpicnn::core {

struct Pair {
  std::uint32_t first = 0, second = 0;  // sample indices
  bool same = false;
};

// LFW's pairs.txt: a header "sets pairs_per_set" (or just "pairs": one set), then per set that many
// matched lines "name n1 n2" and as many mismatched lines "name1 n1 name2 n2" (tab or space
// separated). `sample_of(name, n)` gives the sample index of image n of that person, or nothing;
// `source` names the file in errors (IoError "<source>:<line>: ..." for a malformed line, a
// missing sample or a wrong count). Pairs keep the file's order, so 10 folds are its 10 sets.
std::vector<Pair> read_lfw_pairs(std::istream& in, const std::string& source,
                                 const std::function<std::optional<std::uint32_t>(const std::string&, int)>& sample_of);

// Every pair (i < j) with the same label, and `negatives` pairs with different labels drawn without
// repetition by core::Rng(seed) (negatives < 0: as many as positives; fewer when fewer exist); the
// whole list then shuffled with the same stream, so that contiguous folds mix both kinds.
std::vector<Pair> pairs_from_labels(std::span<const std::int32_t> labels, std::uint64_t seed, long negatives = -1);

// Cosine similarity of each pair's embeddings (rows of an (N, dim) array), in double.
std::vector<double> pair_scores(std::span<const float> embeddings, int dim, std::span<const Pair> pairs);

struct RocCurve {
  std::vector<double> false_accept, true_accept, thresholds;  // thresholds[0] = +inf: (0, 0)
};
RocCurve roc_curve(std::span<const double> scores, const std::vector<bool>& same);
double tar_at_far(const RocCurve& roc, double far);

struct FoldAccuracy {
  double mean = 0, std = 0;
  std::vector<double> accuracies, thresholds;  // per held-out fold
};
FoldAccuracy kfold_accuracy(std::span<const double> scores, const std::vector<bool>& same, int folds = 10);

struct Identification {
  double top1 = 0, top5 = 0;
};
Identification identify(std::span<const float> gallery, std::span<const std::int32_t> gallery_labels,
                        std::span<const float> probes, std::span<const std::int32_t> probe_labels, int dim);

// accuracy (10-fold), accuracy_std, threshold (mean over folds), auc, tar_at_far_1e-2, tar_at_far_1e-3.
std::vector<std::pair<std::string, double>> verification_metrics(std::span<const double> scores,
                                                                 const std::vector<bool>& same);
// The names verification_metrics gives, in its order.
const std::vector<std::string>& verification_metric_names();

// The seed of the negative pairs drawn from labels by every evaluation (and `embed`'s default).
inline constexpr std::uint64_t kLabelPairSeed = 18;
// verification_metrics of embeddings (N, dim) on pairs_from_labels(labels, seed); empty when there
// are fewer pairs than the 10 folds. The pairs grow as N^2 / identities (every positive).
std::vector<std::pair<std::string, double>> label_pair_verification(std::span<const float> embeddings, int dim,
                                                                    std::span<const std::int32_t> labels,
                                                                    std::uint64_t seed = kLabelPairSeed);

}  // namespace mpicnn::core
