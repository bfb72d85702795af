#pragma once
//! \file
//! One contiguous buffer that holds all of a model's parameter tensors, so that averaging them
//! is one all-reduce over the buffer in place: no pack, no unpack, no second copy.

#include <algorithm>
#include <cstddef>
#include <limits>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace strata {

//! A fixed-capacity, 64-byte aligned buffer in which parameter tensors are allocated one after
//! another. It never reallocates, so every span it hands out stays valid for the arena's life,
//! moves of the arena included. Each tensor starts on a 64-byte boundary, so vector loads of
//! every tensor are aligned; the gaps are zero and stay zero under averaging (the mean of zeros
//! is zero), which lets `flat()` be all-reduced as a whole. Tensors are never freed one by one.
//!
//! The element type is arithmetic and not `bool`, as for the fused kernels, and its size divides
//! 64 so that alignment is a whole number of elements.
//!
//! \code
//! strata::ParameterArena<float> arena(1024);
//! std::span<float> w = arena.allocate(100);
//! std::span<float> b = arena.allocate(10);
//! assert(b.data() - w.data() == 112);  // 100 floats, padded to the next 64 bytes
//! assert(arena.size() == 2 && arena.used() == 122 && arena.flat().size() == 122);
//! assert(w[99] == 0 && arena.flat()[105] == 0);  // tensors and gaps start zeroed
//! \endcode
template <class T>
requires std::is_arithmetic_v<T> &&
    (!std::is_same_v<T, bool>)&&std::is_same_v<T, std::remove_cv_t<T>> &&
    (64 % sizeof(T) == 0) class ParameterArena {
 public:
  using value_type = T;
  //! Bytes: a cache line, and the width of the widest vector load (AVX-512).
  static constexpr std::size_t alignment = 64;

  //! Reserves room for `capacity_elements` elements, gaps included; throws
  //! `std::invalid_argument` if that many bytes cannot even be counted, `std::bad_alloc` if they
  //! cannot be had.
  explicit ParameterArena(std::size_t capacity_elements) : capacity_(capacity_elements) {
    if (capacity_elements > max_capacity) {
      throw std::invalid_argument("ParameterArena: a capacity of " +
                                  std::to_string(capacity_elements) +
                                  " elements exceeds the limit of " + std::to_string(max_capacity));
    }
    // Rounded up, so that an empty tensor placed at the next boundary still points inside the
    // allocation (or one past it).
    const std::size_t stored = round_up(capacity_elements);
    if (stored != 0) {
      data_ = static_cast<T*>(::operator new (stored * sizeof(T), std::align_val_t{alignment}));
    }
  }

  ParameterArena(const ParameterArena&) = delete;
  ParameterArena& operator=(const ParameterArena&) = delete;

  //! Takes over the buffer: spans from `other` stay valid and now belong to this arena;
  //! `other` is left empty with capacity 0.
  ParameterArena(ParameterArena&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        capacity_(std::exchange(other.capacity_, 0)),
        used_(std::exchange(other.used_, 0)),
        tensors_(std::move(other.tensors_)) {
    other.tensors_.clear();
  }

  ParameterArena& operator=(ParameterArena&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      capacity_ = std::exchange(other.capacity_, 0);
      used_ = std::exchange(other.used_, 0);
      tensors_ = std::move(other.tensors_);
      other.tensors_.clear();
    }
    return *this;
  }

  ~ParameterArena() { release(); }

  //! A new zeroed tensor of `n` elements at the next 64-byte boundary. Throws
  //! `std::invalid_argument` if it does not fit, leaving the arena as it was. An empty tensor
  //! always fits and takes no room.
  [[nodiscard]] std::span<T> allocate(std::size_t n) {
    const std::size_t start = round_up(used_);
    if (n != 0 && (start > capacity_ || n > capacity_ - start)) {
      const std::size_t left = start > capacity_ ? 0 : capacity_ - start;
      throw std::invalid_argument("ParameterArena::allocate: requested " + std::to_string(n) +
                                  " elements but only " + std::to_string(left) + " of " +
                                  std::to_string(capacity_) + " remain after the 64-byte boundary");
    }
    const std::span<T> tensor(data_ + start, n);
    tensors_.push_back(tensor);  // first: if it throws, nothing has changed
    if (n != 0) {
      std::fill(data_ + used_, data_ + start + n, T{});  // the gap before the tensor, and it
      used_ = start + n;
    }
    return tensor;
  }

  //! The used prefix of the buffer, gaps included and trailing room excluded: what the
  //! averager all-reduces in place. Invalidated by `allocate` (it grows), not by moves.
  [[nodiscard]] std::span<T> flat() noexcept { return {data_, used_}; }
  [[nodiscard]] std::span<const T> flat() const noexcept { return {data_, used_}; }

  //! The allocated tensors in allocation order: a tensor list for `pack` and `unpack`. The
  //! spans stay valid, but this list is invalidated by the next `allocate`.
  [[nodiscard]] std::span<const std::span<T>> tensors() noexcept { return tensors_; }

  //! The number of tensors allocated, empty ones included.
  [[nodiscard]] std::size_t size() const noexcept { return tensors_.size(); }
  //! Elements the buffer can hold, gaps included.
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  //! Elements used so far, gaps included: `flat().size()`.
  [[nodiscard]] std::size_t used() const noexcept { return used_; }

 private:
  static constexpr std::size_t per_line = alignment / sizeof(T);
  // The largest capacity whose rounded-up byte count still fits in a size_t.
  static constexpr std::size_t max_capacity =
      std::numeric_limits<std::size_t>::max() / sizeof(T) / per_line * per_line;

  static constexpr std::size_t round_up(std::size_t n) noexcept {
    return (n + per_line - 1) / per_line * per_line;
  }

  void release() noexcept {
    if (data_ != nullptr) ::operator delete (data_, std::align_val_t{alignment});
    data_ = nullptr;
  }

  T* data_ = nullptr;
  std::size_t capacity_;
  std::size_t used_ = 0;
  std::vector<std::span<T>> tensors_;
};

}  // namespace strata
