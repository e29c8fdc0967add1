// Global-batch BatchNorm on one process against PyTorch's BatchNorm2d in training mode (float64,
// written at test time by pytorch/make_global_bn_fixture.py): output, input gradient, scale and
// shift gradients and the running statistics after one step, over one micro-batch holding the
// whole batch and over the same batch cut into two unequal micro-batches.
#include <gtest/gtest.h>

#include <fstream>
#include <tuple>

#include "core/model.hpp"
#include "fixture_text.hpp"

namespace mpicnn::core {
namespace {

struct Fixture {
  Shape input;
  int batch = 0;
  std::vector<double> x, gamma, beta, dy, y, dx, dgamma, dbeta, running_mean, running_var;
};

Fixture read_fixture() {
  std::ifstream in(MPICNN_GLOBAL_BN_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_GLOBAL_BN_FIXTURE;
  Fixture f;
  const std::vector<double> shape = values_after(in, "shape");
  f.batch = int(shape.at(0));
  f.input = {int(shape.at(1)), int(shape.at(2)), int(shape.at(3))};
  for (auto [name, values] : {std::pair{"x", &f.x}, {"gamma", &f.gamma}, {"beta", &f.beta}, {"dy", &f.dy}, {"y", &f.y},
                              {"dx", &f.dx}, {"dgamma", &f.dgamma}, {"dbeta", &f.dbeta},
                              {"running_mean", &f.running_mean}, {"running_var", &f.running_var}})
    *values = values_after(in, name);
  return f;
}

std::vector<float> floats(const std::vector<double>& v) { return {v.begin(), v.end()}; }

int param(const Model& model, const std::string& name) {
  for (std::size_t i = 0; i < model.params().infos().size(); ++i)
    if (model.params().infos()[i].name == name) return int(i);
  ADD_FAILURE() << "no parameter " << name;
  return 0;
}

// max |ours - reference| / max |reference|
double relative_error(const std::vector<float>& ours, const std::vector<double>& reference) {
  const auto [worst, largest] = worst_and_largest(ours, 1.0, reference);
  return worst / largest;
}

TEST(GlobalBatchNorm, MatchesPyTorchBatchNorm2dInTrainingOverTheWholeBatch) {
  const Fixture f = read_fixture();
  for (const std::vector<int>& cut : {std::vector<int>{f.batch}, std::vector<int>{2, f.batch - 2}}) {
    Model model("bn", f.input, f.batch);
    const int weight = param(model, "0.weight"), bias = param(model, "0.bias");
    const std::vector<float> gamma = floats(f.gamma), beta = floats(f.beta), x = floats(f.x), dy = floats(f.dy);
    std::copy(gamma.begin(), gamma.end(), model.params().value(weight));
    std::copy(beta.begin(), beta.end(), model.params().value(bias));
    LocalExchange exchange(int(cut.size()));
    model.run() = {true, 1, 0, 0, 0};
    for (int start = 0, k = 0; k < int(cut.size()); start += cut[k], ++k)
      model.run().micro_batches.push_back({start, cut[k], start, k});
    model.run().exchange = &exchange;
    model.params().reserve_gradient_sets(int(cut.size()));

    const float* out = model.forward(x.data(), f.batch);
    const std::vector<float> y(out, out + x.size());
    std::vector<float> dx(x.size());
    model.layers()[0]->backward(dx.data(), dy.data(), x.data(), out, f.batch);
    std::vector<float> dgamma(gamma.size(), 0.f), dbeta(beta.size(), 0.f);
    for (int k = 0; k < int(cut.size()); ++k) {
      model.params().select_gradients(k);
      for (std::size_t c = 0; c < gamma.size(); ++c)
        dgamma[c] += model.params().grad(weight)[c], dbeta[c] += model.params().grad(bias)[c];
    }
    model.params().select_gradients(0);
    model.commit_statistics(1);
    const float* mean = model.state().value(0);
    const float* var = model.state().value(1);
    const std::vector<float> running_mean(mean, mean + gamma.size()), running_var(var, var + gamma.size());

    const std::string what = std::to_string(cut.size()) + " micro-batch(es): ";
    using Row = std::tuple<const char*, const std::vector<float>*, const std::vector<double>*>;
    for (const auto& [name, ours, reference] :
         std::vector<Row>{{"y", &y, &f.y}, {"dx", &dx, &f.dx}, {"dgamma", &dgamma, &f.dgamma}, {"dbeta", &dbeta, &f.dbeta},
                          {"running_mean", &running_mean, &f.running_mean}, {"running_var", &running_var, &f.running_var}}) {
      const double error = relative_error(*ours, *reference);
      std::printf("[ figure ] %s%s max relative error %.3g\n", what.c_str(), name, error);
      EXPECT_LE(error, 1e-5) << what << name;
    }
  }
}

}  // namespace
}  // namespace mpicnn::core
