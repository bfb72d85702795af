#pragma once
// A fixed-capacity string that can be built in constant expressions and passed as a template
// argument. C++20 static_assert only takes literals, so strata puts the numbers of a broken rule
// into the template arguments of the failing class instead: compilers print those values in the
// "in instantiation of" line, right above the static_assert text that names the rule.

#include <cstddef>
#include <string_view>

namespace strata::detail {

struct Message {
  static constexpr std::size_t capacity = 240;

  // Public members only: the type must be structural to be a non-type template argument.
  char text[capacity]{};
  std::size_t length = 0;

  constexpr Message& operator<<(std::string_view s) noexcept {
    for (char c : s) {
      if (length + 1 >= capacity) break;  // keep the terminating zero; never overflow
      text[length++] = c;
    }
    return *this;
  }

  constexpr Message& operator<<(std::size_t value) noexcept {
    char digits[24]{};
    std::size_t n = 0;
    do {
      digits[n++] = static_cast<char>('0' + value % 10);
      value /= 10;
    } while (value != 0);
    while (n != 0 && length + 1 < capacity) text[length++] = digits[--n];
    return *this;
  }

  [[nodiscard]] constexpr std::string_view view() const noexcept { return {text, length}; }
  [[nodiscard]] constexpr bool empty() const noexcept { return length == 0; }
};

}  // namespace strata::detail
