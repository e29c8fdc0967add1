#pragma once
// Command-line and INI settings for the subcommands: every key of a config file ("[train]
// epochs = 3") is also a command-line option ("--train.epochs=3"); the command line wins. Values
// are kept as text and converted on use, so that every error names the key, the value and what
// was expected.
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace mpicnn::app {

struct Key {
  std::string name;           // "train.epochs"; a name without a dot is a command-line flag only
  std::string default_value;  // "" with required = true: must be given
  std::string help;
  bool required = false;
  bool is_switch = false;     // a flag without a value, e.g. --json
};

class Settings {
 public:
  Settings(std::string command, std::vector<Key> keys);

  // Parses the command line (after the subcommand) and, if --config is given, that INI file.
  // `positional` names the key that bare arguments fill (e.g. "file" for `inspect FILE`).
  void parse(const std::vector<std::string>& args, const std::string& positional = "");
  bool help_requested() const { return given("help"); }
  std::string help() const;

  bool given(const std::string& key) const;
  std::string text(const std::string& key) const;
  long integer(const std::string& key, long min_value, long max_value = std::numeric_limits<int>::max()) const;
  double real(const std::string& key, double min_value, bool allow_equal = true) const;
  bool flag(const std::string& key) const;
  std::vector<double> reals(const std::string& key) const;  // comma-separated; "" gives {}
  std::string choice(const std::string& key, const std::vector<std::string>& allowed) const;
  // The resolved configuration as INI text: every sectioned key with its final value.
  std::string resolved_ini() const;
  void set(const std::string& key, const std::string& value) { values_[key] = value; }

 private:
  const Key& key(const std::string& name) const;
  [[noreturn]] void bad_value(const std::string& key, const std::string& expected) const;
  std::string command_;
  std::vector<Key> keys_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> sources_;  // where each value came from, for messages
};

// Parses `args` into `settings`; when --help was asked for, prints the help (on rank 0 only, when
// `print` is false elsewhere) and returns false: the command then has nothing more to do.
bool parse_or_help(Settings& settings, const std::vector<std::string>& args, bool print = true,
                   const std::string& positional = "");

// The nearest known name to `word`, or "" when none is close (edit distance).
std::string nearest(const std::string& word, const std::vector<std::string>& known);

}  // namespace mpicnn::app
