#include "settings.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/errors.hpp"

namespace po = boost::program_options;

namespace mpicnn::app {
namespace {

// An indented line continues the value above it, as in Python's configparser: a long model spec
// can then be written over several lines. Comments and blank lines end a value.
std::string join_continuation_lines(std::istream& in) {
  std::string joined, line;
  bool in_value = false;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t\r");
    const bool blank = first == std::string::npos, comment = !blank && (line[first] == '#' || line[first] == ';');
    if (in_value && !blank && !comment && first > 0) {
      joined.back() = ' ';  // the previous line's newline
      joined += line.substr(first) + "\n";
      continue;
    }
    in_value = !blank && !comment && line[0] != '[' && line.find('=') != std::string::npos;
    joined += line + "\n";
  }
  return joined;
}


std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string strip_dashes(std::string s) {
  while (!s.empty() && s[0] == '-') s.erase(0, 1);
  return s.substr(0, s.find('='));
}

// Boost's error_with_option_name::what() fills placeholders such as %value% or %invalid_line% in a
// loop that never ends when the user's own text contains that placeholder (found by
// fuzz_settings). When the input holds a '%', the message is built from the parts instead.
std::string message_of(const po::error& e, bool input_has_percent) {
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  if (!named || !input_has_percent) return e.what();
  if (const auto* syntax = dynamic_cast<const po::invalid_config_file_syntax*>(&e))
    return "invalid line '" + syntax->tokens() + "', expected 'key = value' or '[section]'";
  return "invalid value or syntax for '" + strip_dashes(named->get_option_name()) + "'";
}

bool has_percent(const std::string& text) { return text.find('%') != std::string::npos; }

}  // namespace

bool parse_or_help(Settings& settings, const std::vector<std::string>& args, bool print, const std::string& positional) {
  settings.parse(args, positional);
  if (!settings.help_requested()) return true;
  if (print) std::fputs(settings.help().c_str(), stdout);
  return false;
}

std::string nearest(const std::string& word, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(3, word.size() / 3) + 1;
  for (const auto& name : known) {
    std::size_t d = edit_distance(word, name);
    // A key typed without its section ("epochs" for "train.epochs") is a near miss too, and so is
    // an abbreviation ("train.batch" for "train.batch_size").
    const auto dot = name.find('.');
    if (dot != std::string::npos) d = std::min(d, edit_distance(word, name.substr(dot + 1)) + 1);
    if (word.size() >= 2 && name.size() > word.size() && name.compare(0, word.size(), word) == 0)
      d = std::min<std::size_t>(d, 1);
    if (d < best_distance) best_distance = d, best = name;
  }
  return best;
}

Settings::Settings(std::string command, std::vector<Key> keys) : command_(std::move(command)), keys_(std::move(keys)) {
  keys_.insert(keys_.begin(), {"help", "", "show this help", false, true});
}

const Key& Settings::key(const std::string& name) const {
  for (const auto& k : keys_)
    if (k.name == name) return k;
  throw Error("internal: setting '" + name + "' is not declared for '" + command_ + "'");
}

void Settings::parse(const std::vector<std::string>& args, const std::string& positional) {
  po::options_description description;
  for (const auto& k : keys_) {
    if (k.is_switch) description.add_options()(k.name.c_str(), "");
    else description.add_options()(k.name.c_str(), po::value<std::vector<std::string>>(), "");  // the last one wins
  }
  std::vector<std::string> known;
  for (const auto& k : keys_) known.push_back(k.name);
  auto unknown = [&](const std::string& name, const std::string& where) -> ConfigError {
    const std::string suggestion = nearest(name, known);
    return ConfigError("unknown " + where + " '" + name + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)") + "; see 'mpicnn " +
                       command_ + " --help'");
  };
  po::variables_map vm;
  try {
    po::positional_options_description bare;
    if (!positional.empty()) bare.add(positional.c_str(), -1);
    // program_options refuses "--key=" (an empty value); pass it as "--key" "".
    std::vector<std::string> split_args;
    for (const auto& arg : args) {
      const bool empty_value = arg.size() > 3 && arg.rfind("--", 0) == 0 && arg.back() == '=' && arg.find('=') == arg.size() - 1;
      if (empty_value) split_args.insert(split_args.end(), {arg.substr(0, arg.size() - 1), ""});
      else split_args.push_back(arg);
    }
    // Whole names only, as in a config file: by default Boost takes an abbreviation silently
    // ("--train.batch" for train.batch_size, where "[train] batch" is an unknown key) or refuses it
    // as ambiguous without the nearest key.
    const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    po::store(po::command_line_parser(split_args).options(description).positional(bare).style(style).run(), vm);
  } catch (const po::unknown_option& e) {
    throw unknown(strip_dashes(e.get_option_name()), "option");
  } catch (const po::too_many_positional_options_error&) {
    throw ConfigError("'mpicnn " + command_ + "' takes no bare arguments" +
                      (positional.empty() ? "" : std::string(" beyond one")) + "; see 'mpicnn " + command_ + " --help'");
  } catch (const po::error& e) {
    throw ConfigError(message_of(e, std::any_of(args.begin(), args.end(), has_percent)) + "; see 'mpicnn " + command_ +
                      " --help'");
  }
  for (const auto& [name, value] : vm) {
    values_[name] = key(name).is_switch ? "true" : value.as<std::vector<std::string>>().back();
    sources_[name] = "option '--" + name + "'";
  }
  if (vm.count("config") && !vm.count("help")) {
    const std::string path = values_["config"];
    if (!std::filesystem::is_regular_file(path)) throw ConfigError("config file '" + path + "' does not exist");
    std::ifstream file(path);
    std::stringstream text(join_continuation_lines(file));
    try {
      const po::parsed_options parsed = po::parse_config_file(text, description, false);
      for (const auto& option : parsed.options) {
        if (option.string_key.find('.') == std::string::npos)
          throw ConfigError(path + ": key '" + option.string_key + "' must be inside a [section]");
        if (vm.count(option.string_key)) continue;  // the command line wins; in the file, the last one
        values_[option.string_key] = option.value.empty() ? "" : option.value[0];
        sources_[option.string_key] = "key '" + option.string_key + "' in " + path;
      }
    } catch (const po::unknown_option& e) {
      const ConfigError error = unknown(e.get_option_name(), "key");
      throw ConfigError(path + ": " + error.what());
    } catch (const po::error& e) {
      throw ConfigError(path + ": " + message_of(e, has_percent(text.str())));
    }
  }
  if (help_requested()) return;
  for (const auto& k : keys_) {
    if (values_.count(k.name)) continue;
    if (k.required) throw ConfigError("missing required " + std::string(k.name.find('.') == std::string::npos ? "option '--" : "key '") + k.name + "'" + (k.help.empty() ? "" : " (" + k.help + ")"));
    if (!k.is_switch) values_[k.name] = k.default_value, sources_[k.name] = "default of '" + k.name + "'";
  }
}

std::string Settings::help() const {
  std::ostringstream out;
  out << "usage: mpicnn " << command_ << " [options]\n";
  std::string section = "-";
  for (const auto& k : keys_) {
    const auto dot = k.name.find('.');
    const std::string s = dot == std::string::npos ? "" : k.name.substr(0, dot);
    if (s != section) out << "\n" << (s.empty() ? "options" : "[" + s + "] (config file section; or --" + s + ".KEY=VALUE)") << ":\n";
    section = s;
    std::string left = "  --" + k.name + (k.is_switch ? "" : "=VALUE");
    if (left.size() < 34) left.resize(34, ' ');
    out << left << " " << k.help;
    if (k.required) out << " (required)";
    else if (!k.is_switch && !k.default_value.empty()) out << " [default: " << k.default_value << "]";
    out << "\n";
  }
  return out.str();
}

bool Settings::given(const std::string& name) const { return values_.count(name) > 0; }

std::string Settings::text(const std::string& name) const {
  key(name);
  const auto it = values_.find(name);
  return it == values_.end() ? "" : it->second;
}

void Settings::bad_value(const std::string& name, const std::string& expected) const {
  const auto it = sources_.find(name);
  throw ConfigError((it == sources_.end() ? "'" + name + "'" : it->second) + ": expected " + expected + ", got '" +
                    text(name) + "'");
}

long Settings::integer(const std::string& name, long min_value, long max_value) const {
  const std::string value = text(name);
  const std::string range = "an integer in [" + std::to_string(min_value) + ", " + std::to_string(max_value) + "]";
  long result = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), result);
  if (ec == std::errc::result_out_of_range) bad_value(name, range);
  if (ec != std::errc() || end != value.data() + value.size()) bad_value(name, "an integer");
  if (result < min_value) bad_value(name, "an integer >= " + std::to_string(min_value));
  if (result > max_value) bad_value(name, range);
  return result;
}

double Settings::real(const std::string& name, double min_value, bool allow_equal) const {
  const std::string value = text(name);
  double result = 0;
  try {
    std::size_t used = 0;
    result = std::stod(value, &used);
    if (used != value.size()) bad_value(name, "a number");
  } catch (const std::logic_error&) {
    bad_value(name, "a number");
  }
  if (!std::isfinite(result) || result < min_value || (!allow_equal && result == min_value)) {
    std::ostringstream bound;
    bound << min_value;
    bad_value(name, std::string("a finite number ") + (allow_equal ? ">= " : "> ") + bound.str());
  }
  return result;
}

bool Settings::flag(const std::string& name) const {
  const std::string value = text(name);
  if (value == "true" || value == "1" || value == "yes" || value == "on") return true;
  if (value == "false" || value == "0" || value == "no" || value == "off" || value.empty()) return false;
  bad_value(name, "true or false");
}

std::vector<double> Settings::reals(const std::string& name) const {
  std::vector<double> result;
  std::stringstream stream(text(name));
  std::string item;
  while (std::getline(stream, item, ',')) {
    try {
      std::size_t used = 0;
      result.push_back(std::stod(item, &used));
      if (item.find_first_not_of(" \t", used) != std::string::npos) bad_value(name, "comma-separated numbers");
    } catch (const std::logic_error&) {
      bad_value(name, "comma-separated numbers");
    }
  }
  return result;
}

std::string Settings::choice(const std::string& name, const std::vector<std::string>& allowed) const {
  const std::string value = text(name);
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return value;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  const std::string suggestion = nearest(value, allowed);
  bad_value(name, "one of " + list + (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"));
}

std::string Settings::resolved_ini() const {
  std::ostringstream out;
  std::string section;
  for (const auto& k : keys_) {
    const auto dot = k.name.find('.');
    if (dot == std::string::npos) continue;
    const std::string s = k.name.substr(0, dot);
    if (s != section) out << (section.empty() ? "" : "\n") << "[" << s << "]\n";
    section = s;
    out << k.name.substr(dot + 1) << " = " << text(k.name) << "\n";
  }
  return out.str();
}

}  // namespace mpicnn::app
