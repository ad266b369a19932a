// wordfreq (C++): counts the words of the input (letters and digits, lowercased) and
// returns one "word count" line per distinct word, most frequent first, ties in
// alphabetical order. The input "" gives "". Uses std::string, std::vector,
// std::unordered_map, <algorithm> and std::ostringstream; logs a summary through
// std::cout (stdout reaches the extension's log).
#include <airlock/skill.h>

#include <algorithm>
#include <cctype>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c)) {
      word.push_back(static_cast<char>(std::tolower(c)));
    } else if (!word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

}  // namespace

AIRLOCK_SKILL(run) {
  const std::string_view text(reinterpret_cast<const char*>(input), input_len);
  const std::vector<std::string> words = split_words(text);

  std::unordered_map<std::string, unsigned> counts;
  for (const auto& w : words) ++counts[w];
  std::vector<std::pair<std::string, unsigned>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });

  std::ostringstream out;
  for (const auto& [word, n] : sorted) out << word << ' ' << n << '\n';
  const std::string result = out.str();
  airlock_output(result.data(), result.size());

  std::cout << "wordfreq: " << words.size() << " words, " << sorted.size() << " distinct" << std::endl;
  return AIRLOCK_OK;
}
