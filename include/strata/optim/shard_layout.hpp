#pragma once
//! \file
//! `strata::optim::ShardLayout`: how many tensors are laid out in one flat, padded buffer cut
//! into buckets, and which slice of each bucket a rank owns.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "strata/optim/update.hpp"

namespace strata::optim {

//! The flat layout of a list of tensors for bucketed, sharded reduction:
//! - tensors are laid out in *ready order* (the order a backward pass produces their gradients;
//!   by default the reverse of the list), back to back;
//! - consecutive tensors fill a bucket until the next one would take it past `bucket_elements`
//!   (a tensor larger than that gets a bucket of its own; 0 puts everything in one bucket); a
//!   tensor never straddles two buckets, so a bucket is complete when all its tensors are;
//! - each bucket is padded with zeros to a multiple of `shards · alignment`, so that the
//!   bucket's `shards` slices are equal and each starts on an `alignment`-element boundary;
//! - shard `r` is slice `r` of every bucket, concatenated in bucket order.
//!
//! \code
//! const std::size_t sizes[] = {10, 3, 7};
//! strata::optim::ShardLayout l(sizes, /*shards=*/2, /*shard=*/1, /*alignment=*/4, /*bucket=*/10);
//! // ready order 2, 1, 0: bucket 0 = {tensor 2, tensor 1} (10 -> 16), bucket 1 = {tensor 0} (10 -> 16)
//! assert(l.num_buckets() == 2 && l.total_elements() == 32 && l.shard_elements() == 16);
//! assert(l.tensor_offset(2) == 0 && l.tensor_offset(1) == 7 && l.tensor_offset(0) == 16);
//! assert(l.bucket_of(0) == 1 && l.segments().size() == 2);
//! \endcode
class ShardLayout {
 public:
  //! One bucket: `length` elements at `begin` of the flat buffer, holding the tensors at
  //! positions `[first, last)` of the ready order; this rank's slice of it sits at `shard_begin`
  //! of the shard.
  struct Bucket {
    std::size_t begin = 0;
    std::size_t length = 0;
    std::size_t first = 0;
    std::size_t last = 0;
    std::size_t shard_begin = 0;
  };

  //! Ready order: the reverse of `sizes`.
  ShardLayout(std::span<const std::size_t> sizes, std::size_t shards, std::size_t shard,
              std::size_t alignment, std::size_t bucket_elements)
      : ShardLayout(sizes, reversed(sizes.size()), shards, shard, alignment, bucket_elements) {}

  //! `ready_order` lists every tensor index once. Throws `std::invalid_argument` when there are
  //! no tensors, the order is not a permutation, `shards` or `alignment` is 0, or `shard` is not
  //! below `shards`.
  ShardLayout(std::span<const std::size_t> sizes, std::vector<std::size_t> ready_order,
              std::size_t shards, std::size_t shard, std::size_t alignment,
              std::size_t bucket_elements)
      : sizes_(sizes.begin(), sizes.end()),
        order_(std::move(ready_order)),
        offsets_(sizes.size()),
        bucket_of_(sizes.size()),
        shards_(shards),
        shard_(shard),
        alignment_(alignment),
        bucket_elements_(bucket_elements) {
    check();
    const std::size_t quantum = shards_ * alignment_;
    std::size_t at = 0;
    Bucket open{};
    std::size_t filled = 0;
    auto close = [&] {
      open.length = add(filled, quantum - 1) / quantum * quantum;
      if (open.length == 0) open.length = quantum;  // a bucket of empty tensors still gets a slot
      at = add(open.begin, open.length);
      buckets_.push_back(open);
    };
    for (std::size_t pos = 0; pos < order_.size(); ++pos) {
      const std::size_t t = order_[pos];
      if (pos > 0 && bucket_elements_ != 0 && add(filled, sizes_[t]) > bucket_elements_) {
        close();
        open = Bucket{.begin = at, .first = pos};
        filled = 0;
      }
      open.last = pos + 1;
      offsets_[t] = open.begin + filled;
      bucket_of_[t] = buckets_.size();
      filled = add(filled, sizes_[t]);
    }
    close();
    total_ = at;
    for (Bucket& b : buckets_) {
      b.shard_begin = shard_elements_;
      shard_elements_ += b.length / shards_;
    }
    for (const Bucket& b : buckets_) {
      const std::size_t lo = b.begin + shard_ * (b.length / shards_);
      const std::size_t hi = lo + b.length / shards_;
      for (std::size_t pos = b.first; pos < b.last; ++pos) {
        const std::size_t t = order_[pos];
        const std::size_t t_lo = offsets_[t], t_hi = offsets_[t] + sizes_[t];
        const std::size_t a = t_lo > lo ? t_lo : lo, z = t_hi < hi ? t_hi : hi;
        if (a >= z) continue;
        segments_.push_back(ShardSegment{.offset = b.shard_begin + (a - lo),
                                         .length = z - a,
                                         .tensor = t,
                                         .tensor_offset = a - t_lo});
      }
    }
  }

  //! The tensors, their sizes, and the order their gradients become ready.
  [[nodiscard]] std::size_t num_tensors() const noexcept { return sizes_.size(); }
  [[nodiscard]] std::size_t tensor_size(std::size_t t) const { return sizes_.at(t); }
  [[nodiscard]] std::span<const std::size_t> sizes() const noexcept { return sizes_; }
  [[nodiscard]] std::span<const std::size_t> ready_order() const noexcept { return order_; }
  //! Where tensor `t` starts in the flat buffer.
  [[nodiscard]] std::size_t tensor_offset(std::size_t t) const { return offsets_.at(t); }
  //! The bucket that holds tensor `t`.
  [[nodiscard]] std::size_t bucket_of(std::size_t t) const { return bucket_of_.at(t); }
  //! The buckets in the order they are reduced.
  [[nodiscard]] std::span<const Bucket> buckets() const noexcept { return buckets_; }
  [[nodiscard]] std::size_t num_buckets() const noexcept { return buckets_.size(); }
  //! The flat buffer's length, padding included.
  [[nodiscard]] std::size_t total_elements() const noexcept { return total_; }
  //! The elements of the tensors, without padding.
  [[nodiscard]] std::size_t parameter_elements() const noexcept {
    std::size_t n = 0;
    for (std::size_t s : sizes_) n += s;
    return n;
  }
  //! The construction's arguments: shard count, this rank's shard, alignment and bucket capacity
  //! in elements.
  [[nodiscard]] std::size_t shards() const noexcept { return shards_; }
  [[nodiscard]] std::size_t shard() const noexcept { return shard_; }
  [[nodiscard]] std::size_t alignment() const noexcept { return alignment_; }
  [[nodiscard]] std::size_t bucket_elements() const noexcept { return bucket_elements_; }
  //! This rank's shard length: `total_elements() / shards()`.
  [[nodiscard]] std::size_t shard_elements() const noexcept { return shard_elements_; }
  //! The pieces of tensors in this rank's shard, in shard order.
  [[nodiscard]] std::span<const ShardSegment> segments() const noexcept { return segments_; }

  //! A hash of everything the ranks must agree on (sizes, ready order, shards, alignment, bucket
  //! size), not of the shard index.
  [[nodiscard]] std::uint64_t fingerprint() const noexcept {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over 64-bit words
    auto mix = [&h](std::uint64_t w) {
      for (int i = 0; i < 8; ++i) {
        h ^= (w >> (8 * i)) & 0xffu;
        h *= 1099511628211ull;
      }
    };
    mix(sizes_.size());
    for (std::size_t s : sizes_) mix(s);
    for (std::size_t o : order_) mix(o);
    mix(shards_);
    mix(alignment_);
    mix(bucket_elements_);
    return h;
  }

 private:
  static std::vector<std::size_t> reversed(std::size_t n) {
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = n - 1 - i;
    return order;
  }

  // Sizes near the top of size_t would wrap around into a small, wrong layout.
  static std::size_t add(std::size_t a, std::size_t b) {
    if (a > std::numeric_limits<std::size_t>::max() - b) {
      throw std::invalid_argument("ShardLayout: the padded layout has more than " +
                                  std::to_string(std::numeric_limits<std::size_t>::max()) +
                                  " elements");
    }
    return a + b;
  }

  void check() const {
    if (sizes_.empty()) throw std::invalid_argument("ShardLayout: no tensors");
    if (shards_ == 0) throw std::invalid_argument("ShardLayout: 0 shards");
    if (alignment_ == 0) throw std::invalid_argument("ShardLayout: alignment is 0 elements");
    if (alignment_ > std::numeric_limits<std::size_t>::max() / shards_) {
      throw std::invalid_argument("ShardLayout: " + std::to_string(shards_) + " shards of " +
                                  std::to_string(alignment_) +
                                  "-element alignment do not fit in size_t");
    }
    if (shard_ >= shards_) {
      throw std::invalid_argument("ShardLayout: shard " + std::to_string(shard_) +
                                  " is not below the shard count " + std::to_string(shards_));
    }
    if (order_.size() != sizes_.size()) {
      throw std::invalid_argument("ShardLayout: the ready order lists " +
                                  std::to_string(order_.size()) + " tensors, there are " +
                                  std::to_string(sizes_.size()));
    }
    std::vector<bool> seen(sizes_.size(), false);
    for (std::size_t pos = 0; pos < order_.size(); ++pos) {
      const std::size_t t = order_[pos];
      if (t >= sizes_.size() || seen[t]) {
        throw std::invalid_argument("ShardLayout: the ready order is not a permutation: position " +
                                    std::to_string(pos) + " holds " + std::to_string(t) +
                                    (t < sizes_.size() ? ", listed twice" : ", no such tensor"));
      }
      seen[t] = true;
    }
  }

  std::vector<std::size_t> sizes_;
  std::vector<std::size_t> order_;
  std::vector<std::size_t> offsets_;
  std::vector<std::size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  std::vector<ShardSegment> segments_;
  std::size_t shards_;
  std::size_t shard_;
  std::size_t alignment_;
  std::size_t bucket_elements_;
  std::size_t total_ = 0;
  std::size_t shard_elements_ = 0;
};

}  // namespace strata::optim
