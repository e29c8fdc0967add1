// libFuzzer target: the config parser (apps/settings.cpp). Input: INI text, optionally followed by
// a NUL and command-line arguments separated by NULs. Every key is then read with the getter its
// kind uses in train.cpp, so conversion errors are exercised too.
#include <filesystem>
#include <vector>

#include "apps/settings.hpp"
#include "fuzz_util.hpp"

namespace {

using mpicnn::app::Key;

std::vector<Key> keys() {
  return {
      {"config", "", "INI file"},
      {"output", "", "run folder"},
      {"data.path", "", "dataset", true},
      {"data.normalize", "true", "flag"},
      {"data.mean", "", "reals"},
      {"model.spec", "conv(4,3) relu flatten dense(3)", "spec"},
      {"model.init", "he", "choice"},
      {"train.epochs", "10", "integer"},
      {"train.batch_size", "64", "integer"},
      {"train.seed", "1", "integer"},
      {"optimizer.lr", "0.01", "real"},
      {"optimizer.momentum", "0", "real"},
      {"json", "", "switch", false, true},
  };
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = input.find('\0');
  const std::string ini = input.substr(0, nul);
  std::vector<std::string> args;
  if (nul != std::string::npos) {
    std::size_t start = nul + 1;
    while (start <= input.size() && args.size() < 16) {
      const std::size_t end = std::min(input.find('\0', start), input.size());
      args.push_back(input.substr(start, end - start));
      start = end + 1;
    }
  }
  static const std::string path = fuzz::temp_path(".ini");
  fuzz::write_file(path, reinterpret_cast<const std::uint8_t*>(ini.data()), ini.size());
  args.push_back("--config=" + path);

  fuzz::expect_clean_rejection([&] {
    mpicnn::app::Settings settings("train", keys());
    settings.parse(args);
    if (settings.help_requested()) {
      (void)settings.help();
      return;
    }
    (void)settings.flag("data.normalize");
    (void)settings.reals("data.mean");
    (void)settings.text("model.spec");
    (void)settings.choice("model.init", {"he", "he_uniform", "xavier", "xavier_normal"});
    (void)settings.integer("train.epochs", 1);
    (void)settings.integer("train.batch_size", 1);
    (void)settings.integer("train.seed", 0);
    (void)settings.real("optimizer.lr", 0, false);
    (void)settings.real("optimizer.momentum", 0);
    (void)settings.flag("json");
    (void)settings.resolved_ini();
  });
  return 0;
}
