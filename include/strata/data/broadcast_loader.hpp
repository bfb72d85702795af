#pragma once
//! \file
//! `strata::data::BroadcastLoader`: one rank per node reads each batch and broadcasts it to the
//! rest of its node, so that the input is read once per node instead of once per rank.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/error.hpp"

namespace strata::data {

//! A data loader for a node: the reader (local rank `reader`, 0 by default) calls the user's
//! read function, the other ranks of the node never do and receive its batch by broadcast over
//! the node communicator. Each call of `next` is collective over the node and costs two
//! broadcasts: a two-word header (status and length), then the batch.
//!
//! The read function takes a `std::vector<T>&` to fill (any length; it arrives empty) and
//! returns `false` at the end of the data. `next` returns the batch on every rank of the node,
//! or `std::nullopt` on every rank at the end. When the read function throws, every rank of the
//! node throws `strata::error` naming the reader and carrying its message (the first 240
//! characters), and the loader stays usable.
//!
//! \code
//! #include <atomic>
//! #include <strata/comm/local.hpp>
//! std::atomic<int> reads{0};
//! strata::LocalWorld(4).run([&](strata::LocalComm& world) {
//!   strata::data::BroadcastLoader loader(world, /*ranks_per_node=*/2);
//!   const int node = world.rank() / 2;
//!   auto batch = loader.next<std::int32_t>([&](std::vector<std::int32_t>& b) {
//!     ++reads;
//!     b = {node, 10 + node};  // each node reads its own part of the data set
//!     return true;
//!   });
//!   assert(batch && (*batch)[0] == node);
//! });
//! assert(reads == 2);  // once per node
//! \endcode
template <communicator Comm>
class BroadcastLoader {
  static_assert(!device_memory_v<Comm>,
                "BroadcastLoader: this communicator's buffers are device memory; the loader "
                "broadcasts host batches");

 public:
  //! Collective over `world`: splits it into nodes of `ranks_per_node` consecutive ranks
  //! (`split_node`; `std::invalid_argument` when that does not divide the world).
  BroadcastLoader(Comm& world, std::size_t ranks_per_node, int reader = 0)
      : BroadcastLoader(split_node(world, static_cast<int>(ranks_per_node)), reader, node_tag{}) {}

  //! Over an existing node communicator (moved in), for programs that already split one.
  [[nodiscard]] static BroadcastLoader over_node(Comm node, int reader = 0) {
    return BroadcastLoader(std::move(node), reader, node_tag{});
  }

  //! Whether this rank reads (and the others receive).
  [[nodiscard]] bool is_reader() const noexcept { return node_.rank() == reader_; }
  //! The node communicator the batches travel on.
  [[nodiscard]] Comm& node() noexcept { return node_; }
  //! Batches this rank has received or read.
  [[nodiscard]] std::size_t batches() const noexcept { return batches_; }

  //! Collective over the node: see the class comment.
  template <comm_value T, class Read>
  requires std::invocable < Read&, std::vector<T>
  & > std::optional<std::vector<T>> next(Read&& read) {
    std::vector<T> batch;
    std::int64_t header[2] = {status_ok, 0};
    std::string failure;
    bool failed = false;
    if (is_reader()) {
      try {
        const bool more = static_cast<bool>(read(batch));
        header[0] = more ? status_ok : status_end;
        header[1] = more ? static_cast<std::int64_t>(batch.size()) : 0;
      } catch (const std::exception& e) {
        failed = true;
        failure = e.what();
        if (failure.empty()) failure = "an exception with no message";
      } catch (...) {
        failed = true;
        failure = "a non-standard exception";
      }
      if (failed) {
        failure.resize(std::min<std::size_t>(failure.size(), max_message));
        header[0] = status_failed;
        header[1] = static_cast<std::int64_t>(failure.size());
      }
    }
    node_.broadcast(std::span<std::int64_t>(header), reader_);
    if (header[0] == status_failed) {
      // The reader's message, as bytes in int64 words: the element types every backend moves.
      std::vector<std::int64_t> words((static_cast<std::size_t>(header[1]) + 7) / 8, 0);
      if (is_reader()) std::memcpy(words.data(), failure.data(), failure.size());
      node_.broadcast(std::span<std::int64_t>(words), reader_);
      std::string text(static_cast<std::size_t>(header[1]), '\0');
      std::memcpy(text.data(), words.data(), text.size());
      throw error("BroadcastLoader::next", node_.rank(),
                  "the reader (rank " + std::to_string(reader_) + " of the node) failed: " + text);
    }
    if (header[0] == status_end) return std::nullopt;
    if (!is_reader()) batch.resize(static_cast<std::size_t>(header[1]));
    node_.broadcast(std::span<T>(batch), reader_);
    ++batches_;
    return batch;
  }

 private:
  struct node_tag {};
  BroadcastLoader(Comm node, int reader, node_tag) : node_(std::move(node)), reader_(reader) {
    if (reader_ < 0 || reader_ >= node_.size()) {
      throw std::invalid_argument("BroadcastLoader: reader " + std::to_string(reader_) +
                                  " is not a rank of a node of " + std::to_string(node_.size()));
    }
  }

  static constexpr std::int64_t status_ok = 0, status_end = 1, status_failed = 2;
  static constexpr std::size_t max_message = 240;

  Comm node_;
  int reader_;
  std::size_t batches_ = 0;
};

}  // namespace strata::data
