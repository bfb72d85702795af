// ShardLayout: hand-worked layouts, and on random tensor lists the properties every layout must
// have (the shards tile the flat buffer, the segments cover every tensor element once, the buckets
// follow the filling rule), checked from the layouts of all shards together.
#include <doctest/doctest.h>

#include <strata/optim/shard_layout.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using strata::optim::ShardLayout;
using strata::optim::ShardSegment;
using Bucket = ShardLayout::Bucket;

bool same_bucket(const Bucket& a, const Bucket& b) {
  return a.begin == b.begin && a.length == b.length && a.first == b.first && a.last == b.last &&
         a.shard_begin == b.shard_begin;
}

std::string describe(const Bucket& b) {
  return "{begin " + std::to_string(b.begin) + ", length " + std::to_string(b.length) +
         ", tensors [" + std::to_string(b.first) + ", " + std::to_string(b.last) +
         "), shard_begin " + std::to_string(b.shard_begin) + "}";
}

void check_buckets(const ShardLayout& l, const std::vector<Bucket>& want) {
  REQUIRE(l.num_buckets() == want.size());
  for (std::size_t b = 0; b < want.size(); ++b) {
    CAPTURE(b);
    INFO("got " << describe(l.buckets()[b]) << ", want " << describe(want[b]));
    CHECK(same_bucket(l.buckets()[b], want[b]));
  }
}

std::vector<ShardSegment> segments_of(const ShardLayout& l) {
  return {l.segments().begin(), l.segments().end()};
}

// Everything the layouts of all `shards` shards of one tensor list must satisfy together.
void check_properties(const std::vector<std::size_t>& sizes, const std::vector<std::size_t>& order,
                      std::size_t shards, std::size_t alignment, std::size_t bucket) {
  std::vector<ShardLayout> all;
  for (std::size_t r = 0; r < shards; ++r)
    all.emplace_back(sizes, order, shards, r, alignment, bucket);
  const ShardLayout& l0 = all[0];
  const std::size_t total = l0.total_elements();
  const std::size_t quantum = shards * alignment;

  // Accessors.
  CHECK(l0.num_tensors() == sizes.size());
  CHECK(std::vector<std::size_t>(l0.sizes().begin(), l0.sizes().end()) == sizes);
  CHECK(std::vector<std::size_t>(l0.ready_order().begin(), l0.ready_order().end()) == order);
  CHECK(l0.parameter_elements() == std::accumulate(sizes.begin(), sizes.end(), std::size_t{0}));
  CHECK(l0.shards() == shards);
  CHECK(l0.alignment() == alignment);
  CHECK(l0.bucket_elements() == bucket);
  for (std::size_t t = 0; t < sizes.size(); ++t) CHECK(l0.tensor_size(t) == sizes[t]);

  // Every shard agrees on everything but its own slice.
  for (std::size_t r = 0; r < shards; ++r) {
    const ShardLayout& l = all[r];
    CAPTURE(r);
    CHECK(l.shard() == r);
    CHECK(l.fingerprint() == l0.fingerprint());
    CHECK(l.total_elements() == total);
    CHECK(l.shard_elements() * shards == total);
    REQUIRE(l.num_buckets() == l0.num_buckets());
    for (std::size_t b = 0; b < l.num_buckets(); ++b)
      CHECK(same_bucket(l.buckets()[b], l0.buckets()[b]));
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      CHECK(l.tensor_offset(t) == l0.tensor_offset(t));
      CHECK(l.bucket_of(t) == l0.bucket_of(t));
    }
  }

  // Buckets: back to back from 0, padded to the quantum, holding consecutive positions of the
  // ready order back to back, filled by the rule.
  std::size_t at = 0, shard_at = 0, pos = 0;
  const auto buckets = l0.buckets();
  for (std::size_t b = 0; b < buckets.size(); ++b) {
    CAPTURE(b);
    const Bucket& k = buckets[b];
    CHECK(k.begin == at);
    CHECK(k.length > 0);
    CHECK(k.length % quantum == 0);
    CHECK(k.shard_begin == shard_at);
    CHECK(k.first == pos);
    CHECK(k.last > k.first);
    std::size_t filled = 0;
    for (std::size_t p = k.first; p < k.last; ++p) {
      const std::size_t t = order[p];
      CHECK(l0.bucket_of(t) == b);
      CHECK(l0.tensor_offset(t) == k.begin + filled);
      filled += sizes[t];
    }
    CHECK(filled <= k.length);
    CHECK(k.length <
          filled + quantum + (filled == 0 ? quantum : 0));  // no more padding than needed
    if (bucket == 0) {
      CHECK(buckets.size() == 1);
    } else {
      // Over capacity only when a single tensor is larger than a bucket.
      CHECK((filled <= bucket || k.last - k.first == 1));
      // Closed only when the next tensor would not fit.
      if (b + 1 < buckets.size()) CHECK(filled + sizes[order[k.last]] > bucket);
    }
    at += k.length;
    shard_at += k.length / shards;
    pos = k.last;
  }
  CHECK(at == total);
  CHECK(pos == sizes.size());
  CHECK(shard_at == l0.shard_elements());

  // The shards' slices tile the flat buffer exactly once, each on an alignment boundary; the
  // segments map shard elements onto tensor elements, covering each tensor element once, and
  // what they leave out is padding.
  std::vector<int> flat_cover(total, 0);
  std::vector<std::vector<int>> tensor_cover(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t) tensor_cover[t].assign(sizes[t], 0);
  std::vector<long> tensor_at_flat(total, -1);  // tensor index of each flat element, -1: padding
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    for (std::size_t i = 0; i < sizes[t]; ++i) {
      tensor_at_flat[l0.tensor_offset(t) + i] = static_cast<long>(t);
    }
  }
  for (std::size_t r = 0; r < shards; ++r) {
    const ShardLayout& l = all[r];
    CAPTURE(r);
    std::vector<int> shard_cover(l.shard_elements(), 0);
    for (const Bucket& k : l.buckets()) {
      const std::size_t slice = k.length / shards;
      const std::size_t lo = k.begin + r * slice;
      CHECK(lo % alignment == 0);
      for (std::size_t i = 0; i < slice; ++i) ++flat_cover[lo + i];
    }
    std::size_t last_end = 0;
    for (const ShardSegment& s : l.segments()) {
      CHECK(s.length > 0);
      CHECK(s.offset >= last_end);  // in shard order, not overlapping
      last_end = s.offset + s.length;
      REQUIRE(s.offset + s.length <= l.shard_elements());
      REQUIRE(s.tensor < sizes.size());
      REQUIRE(s.tensor_offset + s.length <= sizes[s.tensor]);
      // The bucket that holds this shard element, and the flat position it stands for.
      const Bucket* home = nullptr;
      for (const Bucket& k : l.buckets()) {
        if (s.offset >= k.shard_begin && s.offset < k.shard_begin + k.length / shards) home = &k;
      }
      REQUIRE(home != nullptr);
      CHECK(s.offset + s.length <= home->shard_begin + home->length / shards);  // one bucket
      const std::size_t flat =
          home->begin + r * (home->length / shards) + (s.offset - home->shard_begin);
      CHECK(flat == l.tensor_offset(s.tensor) + s.tensor_offset);
      for (std::size_t i = 0; i < s.length; ++i) {
        ++tensor_cover[s.tensor][s.tensor_offset + i];
        ++shard_cover[s.offset + i];
      }
    }
    // Shard elements no segment covers are the padding of the flat buffer.
    for (const Bucket& k : l.buckets()) {
      const std::size_t slice = k.length / shards;
      for (std::size_t i = 0; i < slice; ++i) {
        const std::size_t flat = k.begin + r * slice + i;
        CHECK((shard_cover[k.shard_begin + i] == 1) == (tensor_at_flat[flat] >= 0));
      }
    }
  }
  std::size_t flat_bad = 0, tensor_bad = 0;
  for (int c : flat_cover) flat_bad += c != 1;
  for (const auto& t : tensor_cover) {
    for (int c : t) tensor_bad += c != 1;
  }
  CHECK(flat_bad == 0);
  CHECK(tensor_bad == 0);
}

}  // namespace

TEST_CASE("shard layout: the worked example of the header") {
  const std::vector<std::size_t> sizes{10, 3, 7};
  const ShardLayout one(sizes, 2, 1, 4, 10);
  check_buckets(one, {{.begin = 0, .length = 16, .first = 0, .last = 2, .shard_begin = 0},
                      {.begin = 16, .length = 16, .first = 2, .last = 3, .shard_begin = 8}});
  CHECK(one.total_elements() == 32);
  CHECK(one.shard_elements() == 16);
  CHECK(one.parameter_elements() == 20);
  CHECK(one.tensor_offset(2) == 0);
  CHECK(one.tensor_offset(1) == 7);
  CHECK(one.tensor_offset(0) == 16);
  CHECK(one.bucket_of(2) == 0);
  CHECK(one.bucket_of(1) == 0);
  CHECK(one.bucket_of(0) == 1);
  CHECK(std::vector<std::size_t>(one.ready_order().begin(), one.ready_order().end()) ==
        std::vector<std::size_t>{2, 1, 0});
  // Shard 1: flat [8, 16) holds tensor 1's elements 1-2, flat [24, 32) tensor 0's elements 8-9.
  CHECK(segments_of(one) ==
        std::vector<ShardSegment>{{.offset = 0, .length = 2, .tensor = 1, .tensor_offset = 1},
                                  {.offset = 8, .length = 2, .tensor = 0, .tensor_offset = 8}});
  // Shard 0: flat [0, 8) holds tensor 2 and tensor 1's first element, flat [16, 24) tensor 0's
  // first 8 elements.
  const ShardLayout zero(sizes, 2, 0, 4, 10);
  CHECK(segments_of(zero) ==
        std::vector<ShardSegment>{{.offset = 0, .length = 7, .tensor = 2, .tensor_offset = 0},
                                  {.offset = 7, .length = 1, .tensor = 1, .tensor_offset = 0},
                                  {.offset = 8, .length = 8, .tensor = 0, .tensor_offset = 0}});
  check_properties(sizes, {2, 1, 0}, 2, 4, 10);
}

TEST_CASE("shard layout: a tensor larger than a bucket gets a bucket of its own") {
  // Ready order 2, 1, 0; quantum 3 * 2 = 6: {5} -> 6, {50} -> 54, {5} -> 6.
  const std::vector<std::size_t> sizes{5, 50, 5};
  const ShardLayout l(sizes, 3, 2, 2, 20);
  check_buckets(l, {{.begin = 0, .length = 6, .first = 0, .last = 1, .shard_begin = 0},
                    {.begin = 6, .length = 54, .first = 1, .last = 2, .shard_begin = 2},
                    {.begin = 60, .length = 6, .first = 2, .last = 3, .shard_begin = 20}});
  CHECK(l.total_elements() == 66);
  CHECK(l.shard_elements() == 22);
  CHECK(l.tensor_offset(2) == 0);
  CHECK(l.tensor_offset(1) == 6);
  CHECK(l.tensor_offset(0) == 60);
  // Shard 2: flat [4, 6) has tensor 2's element 4 then padding; [42, 60) tensor 1's 36-49 then
  // padding; [64, 66) tensor 0's element 4 then padding.
  CHECK(segments_of(l) ==
        std::vector<ShardSegment>{{.offset = 0, .length = 1, .tensor = 2, .tensor_offset = 4},
                                  {.offset = 2, .length = 14, .tensor = 1, .tensor_offset = 36},
                                  {.offset = 20, .length = 1, .tensor = 0, .tensor_offset = 4}});
  check_properties(sizes, {2, 1, 0}, 3, 2, 20);
  // A bucket exactly as large as the tensors fills up without closing early.
  const std::vector<std::size_t> exact{4, 4, 4};
  const ShardLayout e(exact, 1, 0, 1, 8);
  check_buckets(e, {{.begin = 0, .length = 8, .first = 0, .last = 2, .shard_begin = 0},
                    {.begin = 8, .length = 4, .first = 2, .last = 3, .shard_begin = 8}});
}

TEST_CASE("shard layout: empty tensors take no room and appear in no segment") {
  const std::vector<std::size_t> sizes{0, 4, 0};
  const ShardLayout l(sizes, 2, 0, 1, 0);
  check_buckets(l, {{.begin = 0, .length = 4, .first = 0, .last = 3, .shard_begin = 0}});
  CHECK(l.tensor_offset(2) == 0);
  CHECK(l.tensor_offset(1) == 0);
  CHECK(l.tensor_offset(0) == 4);
  CHECK(segments_of(l) ==
        std::vector<ShardSegment>{{.offset = 0, .length = 2, .tensor = 1, .tensor_offset = 0}});
  check_properties(sizes, {2, 1, 0}, 2, 1, 0);

  // Only empty tensors: one bucket of one quantum of padding, no segments.
  const std::vector<std::size_t> none{0, 0};
  const ShardLayout z(none, 3, 1, 2, 0);
  check_buckets(z, {{.begin = 0, .length = 6, .first = 0, .last = 2, .shard_begin = 0}});
  CHECK(z.shard_elements() == 2);
  CHECK(z.segments().empty());
  check_properties(none, {1, 0}, 3, 2, 0);
  check_properties({0, 0, 8, 0, 3, 0}, {5, 4, 3, 2, 1, 0}, 2, 1, 4);
}

TEST_CASE("shard layout: a custom ready order decides offsets and buckets") {
  const std::vector<std::size_t> sizes{3, 4, 5};
  const ShardLayout l(sizes, {1, 0, 2}, 1, 0, 1, 8);
  check_buckets(l, {{.begin = 0, .length = 7, .first = 0, .last = 2, .shard_begin = 0},
                    {.begin = 7, .length = 5, .first = 2, .last = 3, .shard_begin = 7}});
  CHECK(l.tensor_offset(1) == 0);
  CHECK(l.tensor_offset(0) == 4);
  CHECK(l.tensor_offset(2) == 7);
  CHECK(l.bucket_of(2) == 1);
  CHECK(segments_of(l) ==
        std::vector<ShardSegment>{{.offset = 0, .length = 4, .tensor = 1, .tensor_offset = 0},
                                  {.offset = 4, .length = 3, .tensor = 0, .tensor_offset = 0},
                                  {.offset = 7, .length = 5, .tensor = 2, .tensor_offset = 0}});
  // The list order is a ready order like any other.
  const ShardLayout forward(sizes, {0, 1, 2}, 2, 1, 1, 0);
  CHECK(forward.tensor_offset(0) == 0);
  CHECK(forward.tensor_offset(1) == 3);
  CHECK(forward.tensor_offset(2) == 7);
  check_properties(sizes, {1, 0, 2}, 1, 1, 8);
  check_properties(sizes, {0, 2, 1}, 3, 2, 6);
}

TEST_CASE("shard layout: random tensor lists tile and cover exactly once") {
  std::mt19937_64 rng(2024);
  for (int trial = 0; trial < 150; ++trial) {
    const std::size_t n = 1 + rng() % 9;
    std::vector<std::size_t> sizes(n);
    for (auto& s : sizes)
      s = rng() % 4 == 0 ? 0 : rng() % 3 == 0 ? 1 + rng() % 200 : 1 + rng() % 20;
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::shuffle(order.begin(), order.end(), rng);
    const std::size_t shards = 1 + rng() % 8;
    const std::size_t alignment = 1 + rng() % 5;
    const std::size_t bucket_choices[] = {0, 1, 7, 16, 50, 1000};
    const std::size_t bucket = bucket_choices[rng() % 6];
    CAPTURE(trial);
    CAPTURE(n);
    CAPTURE(shards);
    CAPTURE(alignment);
    CAPTURE(bucket);
    check_properties(sizes, order, shards, alignment, bucket);
  }
}

TEST_CASE("shard layout: the default ready order is the reverse of the list") {
  const std::vector<std::size_t> sizes{6, 1, 9, 2};
  const ShardLayout a(sizes, 3, 1, 2, 5);
  const ShardLayout b(sizes, {3, 2, 1, 0}, 3, 1, 2, 5);
  CHECK(std::vector<std::size_t>(a.ready_order().begin(), a.ready_order().end()) ==
        std::vector<std::size_t>{3, 2, 1, 0});
  CHECK(a.fingerprint() == b.fingerprint());
  CHECK(segments_of(a) == segments_of(b));
  for (std::size_t t = 0; t < sizes.size(); ++t) CHECK(a.tensor_offset(t) == b.tensor_offset(t));
}

TEST_CASE("shard layout: bad arguments are std::invalid_argument") {
  const std::vector<std::size_t> sizes{4, 5};
  const std::vector<std::size_t> none;
  CHECK_THROWS_WITH_AS(ShardLayout(none, 2, 0, 1, 0), "ShardLayout: no tensors",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ShardLayout(none, std::vector<std::size_t>{}, 2, 0, 1, 0),
                       "ShardLayout: no tensors", std::invalid_argument);
  CHECK_THROWS_AS(ShardLayout(sizes, 0, 0, 1, 0), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ShardLayout(sizes, 2, 2, 1, 0),
                       "ShardLayout: shard 2 is not below the shard count 2",
                       std::invalid_argument);
  CHECK_THROWS_AS(ShardLayout(sizes, 2, 7, 1, 0), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ShardLayout(sizes, 2, 0, 0, 0), "ShardLayout: alignment is 0 elements",
                       std::invalid_argument);
  // Orders that are not permutations of the tensor indices.
  CHECK_THROWS_AS(ShardLayout(sizes, {0}, 2, 0, 1, 0), std::invalid_argument);
  CHECK_THROWS_AS(ShardLayout(sizes, {0, 1, 0}, 2, 0, 1, 0), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ShardLayout(sizes, {1, 1}, 2, 0, 1, 0),
                       "ShardLayout: the ready order is not a permutation: position 1 holds 1, "
                       "listed twice",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(ShardLayout(sizes, {0, 2}, 2, 0, 1, 0),
                       "ShardLayout: the ready order is not a permutation: position 1 holds 2, "
                       "no such tensor",
                       std::invalid_argument);
}

TEST_CASE("shard layout: the fingerprint covers what the ranks must agree on, not the shard") {
  const std::vector<std::size_t> sizes{10, 3, 7};
  const auto base = ShardLayout(sizes, 4, 0, 2, 8).fingerprint();
  CHECK(ShardLayout(sizes, 4, 3, 2, 8).fingerprint() == base);
  CHECK(ShardLayout(sizes, {2, 1, 0}, 4, 1, 2, 8).fingerprint() == base);
  const std::vector<std::size_t> other_size{10, 4, 7};
  const std::vector<std::size_t> more{10, 3, 7, 0};
  const std::vector<std::size_t> fewer{10, 3};
  const std::vector<std::size_t> swapped{7, 3, 10};
  CHECK(ShardLayout(other_size, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(more, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(fewer, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(swapped, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(sizes, {0, 1, 2}, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(sizes, {2, 0, 1}, 4, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(sizes, 4, 0, 2, 9).fingerprint() != base);
  CHECK(ShardLayout(sizes, 4, 0, 2, 0).fingerprint() != base);
  CHECK(ShardLayout(sizes, 3, 0, 2, 8).fingerprint() != base);
  CHECK(ShardLayout(sizes, 4, 0, 1, 8).fingerprint() != base);
}

TEST_CASE("shard layout: sizes and alignments beyond size_t are refused, not wrapped") {
  const std::size_t big = std::numeric_limits<std::size_t>::max() - 2;
  const std::size_t sizes[] = {big, 10};
  CHECK_THROWS_AS(strata::optim::ShardLayout(sizes, 1, 0, 1, 0), std::invalid_argument);
  const std::size_t small[] = {10};
  CHECK_THROWS_AS(strata::optim::ShardLayout(small, 16, 0, std::size_t{1} << 62, 0),
                  std::invalid_argument);
  const std::size_t near[] = {std::numeric_limits<std::size_t>::max() - 1};
  CHECK_THROWS_AS(strata::optim::ShardLayout(near, 4, 0, 4, 0), std::invalid_argument);
}
