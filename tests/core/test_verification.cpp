// Verification and identification metrics against scikit-learn on fixed arrays
// (tests/core/sklearn/make_verification_fixture.py, written at test time), LFW pairs.txt reading
// and its errors, pairs generated from labels.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/errors.hpp"
#include "core/verification.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

std::map<std::string, std::vector<double>> read_fixture() {
  std::ifstream in(MPICNN_VERIFICATION_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_VERIFICATION_FIXTURE << " is missing: it is written by sklearn_reference.verification_fixture";
  std::map<std::string, std::vector<double>> arrays;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string name;
    std::size_t count = 0;
    fields >> name >> count;
    std::vector<double>& values = arrays[name];
    for (double v; fields >> v;) values.push_back(v);
    EXPECT_EQ(values.size(), count) << name;
  }
  return arrays;
}

double metric(const std::vector<std::pair<std::string, double>>& metrics, const std::string& name) {
  for (const auto& [key, value] : metrics)
    if (key == name) return value;
  ADD_FAILURE() << "no metric " << name;
  return 0;
}

void expect_scores_match(std::map<std::string, std::vector<double>>& f, const std::string& prefix,
                         const std::vector<double>& scores, const std::vector<bool>& same) {
  const RocCurve roc = roc_curve(scores, same);
  EXPECT_EQ(roc.false_accept, f[prefix + "_fpr"]) << prefix;
  EXPECT_EQ(roc.true_accept, f[prefix + "_tpr"]) << prefix;
  const auto metrics = verification_metrics(scores, same);
  EXPECT_NEAR(metric(metrics, "auc"), f[prefix + "_auc"][0], 1e-12) << prefix;
  EXPECT_EQ(metric(metrics, "tar_at_far_1e-2"), f[prefix + "_tar"][0]) << prefix;
  EXPECT_EQ(metric(metrics, "tar_at_far_1e-3"), f[prefix + "_tar"][1]) << prefix;
  EXPECT_NEAR(metric(metrics, "accuracy"), f[prefix + "_kfold"][0], 1e-12) << prefix;
  EXPECT_NEAR(metric(metrics, "accuracy_std"), f[prefix + "_kfold"][1], 1e-12) << prefix;
  std::printf("[ figure ] %s: %zu pairs, %zu ROC points as roc_curve; AUC %.6f (sklearn %.6f), TAR@FAR 1e-2 %.4f, "
              "1e-3 %.4f, 10-fold accuracy %.4f +- %.4f (reference %.4f +- %.4f)\n",
              prefix.c_str(), scores.size(), roc.false_accept.size(), metric(metrics, "auc"), f[prefix + "_auc"][0],
              metric(metrics, "tar_at_far_1e-2"), metric(metrics, "tar_at_far_1e-3"), metric(metrics, "accuracy"),
              metric(metrics, "accuracy_std"), f[prefix + "_kfold"][0], f[prefix + "_kfold"][1]);
}

TEST(Verification, MatchesScikitLearn) {
  auto f = read_fixture();
  const std::vector<float> embeddings(f["embeddings"].begin(), f["embeddings"].end());
  const std::vector<std::int32_t> labels(f["labels"].begin(), f["labels"].end());
  const int dim = int(embeddings.size() / labels.size());
  std::vector<Pair> pairs;
  std::vector<bool> same;
  for (std::size_t i = 0; i + 2 < f["pairs"].size(); i += 3) {
    pairs.push_back({std::uint32_t(f["pairs"][i]), std::uint32_t(f["pairs"][i + 1]), f["pairs"][i + 2] == 1});
    same.push_back(pairs.back().same);
  }
  ASSERT_EQ(pairs.size(), 3000u);
  const std::vector<double> scores = pair_scores(embeddings, dim, pairs);
  double worst = 0;
  for (std::size_t i = 0; i < scores.size(); ++i) worst = std::max(worst, std::abs(scores[i] - f["scores"][i]));
  EXPECT_LT(worst, 1e-12);
  // The metrics on the reference's own scores: a fixed array, ties and order exactly as sklearn saw them.
  expect_scores_match(f, "pairs", f["scores"], same);
  const std::vector<bool> tied_same(f["tied_same"].begin(), f["tied_same"].end());
  expect_scores_match(f, "tied", f["tied_scores"], tied_same);

  std::vector<float> gallery, probes;
  std::vector<std::int32_t> gallery_labels, probe_labels;
  const std::set<double> in_gallery(f["gallery"].begin(), f["gallery"].end());
  for (std::size_t n = 0; n < labels.size(); ++n) {
    auto& to = in_gallery.count(double(n)) ? gallery : probes;
    to.insert(to.end(), embeddings.begin() + long(n) * dim, embeddings.begin() + long(n + 1) * dim);
    (in_gallery.count(double(n)) ? gallery_labels : probe_labels).push_back(labels[n]);
  }
  const Identification id = identify(gallery, gallery_labels, probes, probe_labels, dim);
  EXPECT_DOUBLE_EQ(id.top1, f["identification"][0]);
  EXPECT_DOUBLE_EQ(id.top5, f["identification"][1]);
  std::printf("[ figure ] identification: %zu probes, %zu gallery identities: top-1 %.4f top-5 %.4f "
              "(top_k_accuracy_score %.4f %.4f)\n", probe_labels.size(), gallery_labels.size(), id.top1, id.top5,
              f["identification"][0], f["identification"][1]);
}

std::optional<std::uint32_t> lookup(const std::string& name, int image) {
  static const std::map<std::pair<std::string, int>, std::uint32_t> samples = {
      {{"Ann", 1}, 0}, {{"Ann", 2}, 1}, {{"Bob", 1}, 2}, {{"Bob", 3}, 3}, {{"Cy", 1}, 4}, {{"Cy", 2}, 5}};
  const auto it = samples.find({name, image});
  return it == samples.end() ? std::nullopt : std::optional<std::uint32_t>(it->second);
}

std::vector<Pair> pairs_of(const std::string& text) {
  std::istringstream in(text);
  return read_lfw_pairs(in, "pairs.txt", lookup);
}

std::string error_of(const std::string& text) {
  try {
    pairs_of(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(LfwPairs, ReadsSetsOfMatchedThenMismatchedPairs) {
  const std::vector<Pair> pairs = pairs_of("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t3\nCy 1 2\nBob 1 Cy 2\n");
  ASSERT_EQ(pairs.size(), 4u);
  auto text = [](const Pair& p) { return std::to_string(p.first) + "-" + std::to_string(p.second) + (p.same ? "+" : "-"); };
  EXPECT_EQ(text(pairs[0]) + " " + text(pairs[1]) + " " + text(pairs[2]) + " " + text(pairs[3]), "0-1+ 0-3- 4-5+ 2-5-");
  EXPECT_EQ(pairs_of("1\nAnn 1 2\nCy 1 Ann 2\n").size(), 2u);  // pairsDevTest.txt: one set
}

TEST(LfwPairs, ErrorsNameTheFileAndLine) {
  EXPECT_THAT(error_of("1 1\nAnn 1 5\nAnn 1 Bob 3\n"), HasSubstr("pairs.txt:2: no sample for Ann image 5 in the embeddings"));
  EXPECT_THAT(error_of("1 1\nAnn 1 2\nAnn 1 Bob\n"), HasSubstr("pairs.txt:3: expected a mismatched pair 'name1 n1 name2 n2'"));
  EXPECT_THAT(error_of("1 1\nAnn 1 Bob 3\nAnn 1 2\n"), HasSubstr("pairs.txt:2: expected a matched pair 'name n1 n2'"));
  EXPECT_THAT(error_of("1 2\nAnn 1 2\nCy 1 2\nAnn 1 Bob 3\n"), HasSubstr("pairs.txt: 3 pairs, the header promises 4"));
  EXPECT_THAT(error_of("1 1\nAnn 1 2\nAnn 1 Bob 3\nCy 1 2\n"), HasSubstr("pairs.txt:4: more pairs than the header's 1 x 2 x 1"));
  EXPECT_THAT(error_of("ten 300\n"), HasSubstr("pairs.txt:1: expected the header 'sets pairs_per_set'"));
  EXPECT_THAT(error_of("1 1\nAnn one 2\nAnn 1 Bob 3\n"), HasSubstr("pairs.txt:2: image number 'one' is not a whole number"));
  EXPECT_THAT(error_of(""), HasSubstr("pairs.txt: empty"));
}

TEST(PairsFromLabels, AllPositivesAndSeededDistinctNegatives) {
  const std::vector<std::int32_t> labels = {3, 1, 3, 2, 1, 3, 2, 0};
  const std::vector<Pair> pairs = pairs_from_labels(labels, 7);
  std::set<std::pair<std::uint32_t, std::uint32_t>> positives, negatives;
  for (const Pair& p : pairs) {
    ASSERT_LT(p.first, p.second);
    EXPECT_EQ(p.same, labels[p.first] == labels[p.second]);
    EXPECT_TRUE((p.same ? positives : negatives).insert({p.first, p.second}).second) << "a pair twice";
  }
  EXPECT_EQ(positives.size(), 5u);  // label 3: 3 pairs, labels 1 and 2: one each
  EXPECT_EQ(negatives.size(), 5u);
  EXPECT_EQ(pairs_from_labels(labels, 7).size(), pairs.size());
  const std::vector<Pair> again = pairs_from_labels(labels, 7), other = pairs_from_labels(labels, 8);
  bool same_order = true, other_order = true;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    same_order &= again[i].first == pairs[i].first && again[i].second == pairs[i].second;
    other_order &= other[i].first == pairs[i].first && other[i].second == pairs[i].second;
  }
  EXPECT_TRUE(same_order);
  EXPECT_FALSE(other_order);
  EXPECT_EQ(pairs_from_labels(labels, 7, 100).size(), 28u);  // every pair of 8 samples, no more
}

}  // namespace
}  // namespace mpicnn::core
