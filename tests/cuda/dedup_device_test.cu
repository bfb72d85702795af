// The CUB de-duplication kernels (dedup.cuh) against the Thrust host path (dedup.hpp): the same
// unique ids, inverse map and counts, exactly, and bitwise the same gradient sums, since both add
// each id's rows in input order. Also the Thrust path itself under thrust::cuda::par.on(stream).
// Compiled in every build where nvcc is present; run (label gpu) where a GPU is, skipped (exit
// 77) elsewhere.
#include <doctest/doctest.h>

#include <strata/cuda/error.hpp>
#include <strata/kernels/dedup.cuh>
#include <strata/kernels/dedup.hpp>

#include <cuda_runtime.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/fill.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "stream.hpp"

namespace {

using cuda_test::Stream;

template <class T>
std::span<T> span_of(thrust::device_vector<T>& v) {
  return {thrust::raw_pointer_cast(v.data()), v.size()};
}

template <class T>
std::vector<T> to_host(const thrust::device_vector<T>& v) {
  std::vector<T> h(v.size());
  thrust::copy(v.begin(), v.end(), h.begin());
  return h;
}

template <class T>
bool same_prefix(const std::vector<T>& a, const std::vector<T>& b, std::size_t count) {
  return a.size() >= count && b.size() >= count &&
         (count == 0 || std::memcmp(a.data(), b.data(), count * sizeof(T)) == 0);
}

enum class Pattern { repeats, unique, equal, heavy, extremes };

const char* name(Pattern p) {
  switch (p) {
    case Pattern::repeats: return "many repeats";
    case Pattern::unique: return "all unique";
    case Pattern::equal: return "all equal";
    case Pattern::heavy: return "one heavy hitter";
    case Pattern::extremes: return "extreme values";
  }
  return "?";
}

// Non-negative ids below a table size, as embeddings have, except for the extreme values.
template <class Id>
std::vector<Id> make_ids(Pattern pattern, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  using L = std::numeric_limits<Id>;
  std::vector<Id> ids(n);
  switch (pattern) {
    case Pattern::repeats: {
      std::uniform_int_distribution<Id> d(0, static_cast<Id>(std::max<std::size_t>(1, n / 20)));
      for (Id& id : ids) id = d(gen);
      break;
    }
    case Pattern::unique:
      for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<Id>(3 * i);
      std::shuffle(ids.begin(), ids.end(), gen);
      break;
    case Pattern::equal: std::fill(ids.begin(), ids.end(), Id(12345)); break;
    case Pattern::heavy: {
      std::uniform_int_distribution<Id> d(0, 1000000);
      std::bernoulli_distribution often(0.5);
      for (Id& id : ids) id = often(gen) ? Id(777) : d(gen);
      break;
    }
    case Pattern::extremes: {
      const Id pool[] = {L::min(),
                         L::max(),
                         Id(0),
                         Id(1),
                         static_cast<Id>(L::max() - 1),
                         static_cast<Id>(L::min() + 1)};
      std::uniform_int_distribution<std::size_t> d(0, std::size(pool) - 1);
      for (Id& id : ids) id = pool[d(gen)];
      break;
    }
  }
  return ids;
}

template <class T>
std::vector<T> make_rows(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<T> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::vector<T> rows(count);
  for (T& x : rows) x = std::ldexp(mantissa(gen), exponent(gen));
  return rows;
}

template <class Id, class Index>
void check_batch(const std::string& label, const std::vector<Id>& ids, std::size_t width,
                 cudaStream_t stream, strata::DeviceDedupWorkspace<Id, Index>& workspace) {
  const std::size_t n = ids.size();

  // The host reference: Thrust on the host.
  strata::DedupWorkspace<Id, Index> host_ws;
  std::vector<Id> h_unique(n);
  std::vector<Index> h_inverse(n), h_counts(n);
  const std::size_t m =
      strata::unique_ids(thrust::host, ids, h_unique, h_inverse, h_counts, host_ws);
  const std::vector<float> rows = make_rows<float>(n * width, n + width);
  std::vector<float> h_sums(m * width);
  strata::segmented_sum(thrust::host, host_ws, rows, width, std::span(h_sums));
  const std::vector<double> drows = make_rows<double>(n * width, n + width + 1);
  std::vector<double> h_isums((m + 2) * width);
  strata::segmented_sum(thrust::host, h_inverse, drows, width, std::span(h_isums), host_ws);

  const Id id_sentinel = 99;
  const Index index_sentinel = 77;
  thrust::device_vector<Id> d_ids(ids.begin(), ids.end()), d_unique(n, id_sentinel);
  thrust::device_vector<Index> d_inverse(n, index_sentinel), d_counts(n, index_sentinel);
  thrust::device_vector<float> d_rows(rows.begin(), rows.end()), d_sums(n * width, -1.0f);
  thrust::device_vector<double> d_drows(drows.begin(), drows.end());
  thrust::device_vector<double> d_isums((m + 2) * width, -1.0);

  const auto compare_dedup = [&](const std::string& form) {
    const auto unique = to_host(d_unique);
    const auto inverse = to_host(d_inverse);
    const auto counts = to_host(d_counts);
    CHECK_MESSAGE(same_prefix(unique, h_unique, m), (label + " " + form + ": unique ids"));
    CHECK_MESSAGE(inverse == h_inverse, (label + " " + form + ": inverse map"));
    CHECK_MESSAGE(same_prefix(counts, h_counts, m), (label + " " + form + ": counts"));
    CHECK_MESSAGE(std::all_of(counts.begin() + static_cast<std::ptrdiff_t>(m), counts.end(),
                              [](Index c) { return c == 0; }),
                  (label + " " + form + ": counts past m are zero"));
  };
  const auto compare_sums = [&](const std::string& form) {
    const auto sums = to_host(d_sums);
    CHECK_MESSAGE(same_prefix(sums, h_sums, m * width), (label + " " + form + ": sums bitwise"));
    CHECK_MESSAGE(std::all_of(sums.begin() + static_cast<std::ptrdiff_t>(m * width), sums.end(),
                              [](float x) { return x == -1.0f; }),
                  (label + " " + form + ": rows past m untouched"));
  };

  // The synchronous form: m comes back to the host.
  const std::size_t dm = strata::device_unique_ids(
      span_of(d_ids), span_of(d_unique), span_of(d_inverse), span_of(d_counts), workspace, stream);
  CHECK_MESSAGE(dm == m,
                (label + ": unique count " + std::to_string(dm) + " vs " + std::to_string(m)));
  CHECK_MESSAGE((workspace.unique_count() == m && workspace.batch_size() == n),
                (label + ": workspace"));
  compare_dedup("unique_ids");
  strata::device_segmented_sum(workspace, span_of(d_rows), width,
                               std::span(span_of(d_sums).data(), m * width), stream);
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  compare_sums("grouped segmented_sum");

  // The asynchronous form, with the sort limited to the bits the ids need where they allow it.
  thrust::fill(d_unique.begin(), d_unique.end(), id_sentinel);
  thrust::fill(d_inverse.begin(), d_inverse.end(), index_sentinel);
  thrust::fill(d_counts.begin(), d_counts.end(), index_sentinel);
  thrust::fill(d_sums.begin(), d_sums.end(), -1.0f);
  int end_bit = static_cast<int>(8 * sizeof(Id));
  bool non_negative = true;
  if constexpr (std::is_signed_v<Id>) {
    non_negative = std::all_of(ids.begin(), ids.end(), [](Id x) { return x >= 0; });
  }
  if (non_negative && n != 0) {
    end_bit = strata::cuda::id_bits(
        static_cast<std::uint64_t>(*std::max_element(ids.begin(), ids.end())));
  }
  strata::device_unique_ids_async(span_of(d_ids), span_of(d_unique), span_of(d_inverse),
                                  span_of(d_counts), workspace, stream, end_bit);
  CHECK_MESSAGE(!workspace.unique_count(),
                (label + ": the async form leaves the count on the device"));
  strata::device_segmented_sum(workspace, span_of(d_rows), width, span_of(d_sums), stream);
  Index device_m = 0;
  strata::cuda_check("cudaMemcpyAsync", -1,
                     cudaMemcpyAsync(&device_m, workspace.device_unique_count(), sizeof(Index),
                                     cudaMemcpyDeviceToHost, stream));
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  CHECK_MESSAGE(static_cast<std::size_t>(device_m) == m, (label + ": device unique count"));
  compare_dedup("unique_ids_async end_bit " + std::to_string(end_bit));
  compare_sums("grouped segmented_sum after unique_ids_async");

  // By the inverse map, with two groups that receive no row.
  strata::device_segmented_sum(std::span<const Index>(span_of(d_inverse)), span_of(d_drows), width,
                               span_of(d_isums), workspace, stream);
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  CHECK_MESSAGE(same_prefix(to_host(d_isums), h_isums, h_isums.size()),
                (label + ": segmented_sum by inverse map bitwise"));

  // The Thrust path on the device, its temporaries from the workspace's allocator. Its sum runs
  // one thread per unique id, correct but slow for a heavy id: large batches skip it.
  if (n * width > 300'000) return;
  strata::DedupWorkspace<Id, Index, thrust::device_vector> thrust_ws;
  const auto policy = thrust::cuda::par(thrust_ws.allocator()).on(stream);
  thrust::fill(d_inverse.begin(), d_inverse.end(), index_sentinel);
  thrust::fill(d_sums.begin(), d_sums.end(), -1.0f);
  const std::size_t tm = strata::unique_ids(policy, span_of(d_ids), span_of(d_unique),
                                            span_of(d_inverse), span_of(d_counts), thrust_ws);
  CHECK_MESSAGE(tm == m, (label + ": Thrust device unique count"));
  strata::segmented_sum(policy, thrust_ws, span_of(d_rows), width,
                        std::span(span_of(d_sums).data(), m * width));
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  const auto inverse = to_host(d_inverse);
  CHECK_MESSAGE(inverse == h_inverse, (label + ": Thrust device inverse map"));
  CHECK_MESSAGE(same_prefix(to_host(d_unique), h_unique, m),
                (label + ": Thrust device unique ids"));
  compare_sums("Thrust device segmented_sum");
}

template <class Id, class Index>
void check_type(cudaStream_t stream, const char* type) {
  // One workspace for all batches: reserved for some, grown for the larger ones.
  strata::DeviceDedupWorkspace<Id, Index> workspace;
  workspace.reserve(1000, stream);
  const std::size_t sizes[] = {0, 1, 2, 31, 1000, 4097, 65536};
  const std::size_t widths[] = {1, 5, 32, 130};
  const Pattern patterns[] = {Pattern::repeats, Pattern::unique, Pattern::equal, Pattern::heavy,
                              Pattern::extremes};
  std::uint64_t seed = 1;
  for (const Pattern pattern : patterns) {
    for (const std::size_t n : sizes) {
      for (const std::size_t width : widths) {
        if (n * width > 4'000'000) continue;
        const std::string label = std::string(type) + " " + name(pattern) +
                                  " n=" + std::to_string(n) + " width=" + std::to_string(width);
        check_batch<Id, Index>(label, make_ids<Id>(pattern, n, seed++), width, stream, workspace);
      }
    }
  }
  // A million ids, with many repeats and with one id only.
  for (const Pattern pattern :
       {Pattern::repeats, Pattern::heavy, Pattern::unique, Pattern::equal}) {
    const std::string label = std::string(type) + " " + name(pattern) + " n=1048576 width=16";
    check_batch<Id, Index>(label, make_ids<Id>(pattern, 1 << 20, seed++), 16, stream, workspace);
  }
}

}  // namespace

TEST_CASE("the status API refuses bad arguments with cudaErrorInvalidValue") {
  const Stream stream;
  // A query never answers 0 bytes.
  std::size_t bytes = 0;
  CHECK(strata::cuda::unique_ids<int, int>(nullptr, bytes, nullptr, 0, nullptr, nullptr, nullptr,
                                           nullptr, nullptr, nullptr, stream) == cudaSuccess);
  CHECK(bytes > 0);
  CHECK(strata::cuda::unique_ids<int, int>(nullptr, bytes, nullptr, 10, nullptr, nullptr, nullptr,
                                           nullptr, nullptr, nullptr, stream,
                                           0) == cudaErrorInvalidValue);
  CHECK(strata::cuda::unique_ids<int, int>(nullptr, bytes, nullptr, 10, nullptr, nullptr, nullptr,
                                           nullptr, nullptr, nullptr, stream,
                                           33) == cudaErrorInvalidValue);
  thrust::device_vector<int> ids(10, 1), out(10), order(10), offsets(11), count(1);
  const int* in = thrust::raw_pointer_cast(ids.data());
  int* p = thrust::raw_pointer_cast(out.data());
  int* c = thrust::raw_pointer_cast(count.data());
  int* o = thrust::raw_pointer_cast(order.data());
  int* f = thrust::raw_pointer_cast(offsets.data());
  REQUIRE(strata::cuda::unique_ids(nullptr, bytes, in, 10, p, p, p, c, o, f, stream) ==
          cudaSuccess);
  thrust::device_vector<char> temp(bytes);
  std::size_t short_bytes = bytes - 1;
  CHECK(strata::cuda::unique_ids(thrust::raw_pointer_cast(temp.data()), short_bytes, in, 10, p, p,
                                 p, c, o, f, stream) == cudaErrorInvalidValue);
  CHECK(strata::cuda::segmented_sum<float, int>(nullptr, nullptr, nullptr, 5, nullptr, 0, nullptr,
                                                stream) == cudaErrorInvalidValue);
}

TEST_CASE("the throwing functions refuse bad sizes before enqueuing anything") {
  const Stream stream;
  strata::DeviceDedupWorkspace<int> workspace;
  CHECK(workspace.batch_size() == 0);
  CHECK(workspace.unique_count() == 0);
  thrust::device_vector<int> ids(10, 1), unique(10), inverse(10), counts(10), small(9);
  CHECK_THROWS_WITH_AS(strata::device_unique_ids(span_of(ids), span_of(unique), span_of(small),
                                                 span_of(counts), workspace, stream),
                       "device_unique_ids: inverse holds 9 entries but there are 10 ids",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      strata::device_unique_ids_async(span_of(ids), span_of(small), span_of(inverse),
                                      span_of(counts), workspace, stream),
      "device_unique_ids_async: unique has room for 9 ids but needs room for "
      "all 10",
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(strata::device_unique_ids(span_of(ids), span_of(unique), span_of(inverse),
                                                 span_of(counts), workspace, stream, 40),
                       "device_unique_ids: end_bit 40 is outside [1, 32]", std::invalid_argument);
  REQUIRE(strata::device_unique_ids(span_of(ids), span_of(unique), span_of(inverse),
                                    span_of(counts), workspace, stream) == 1);

  thrust::device_vector<float> rows(20), sums(2);
  CHECK_THROWS_AS(strata::device_segmented_sum(workspace, span_of(rows), 3, span_of(sums), stream),
                  std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      strata::device_segmented_sum(workspace, span_of(rows), 0, span_of(sums), stream),
      "device_segmented_sum: the row width must be positive", std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      strata::device_segmented_sum(workspace, span_of(rows), 2, std::span<float>(), stream),
      "device_segmented_sum: sums has room for 0 rows of width 2 but needs 1 (the unique count)",
      std::invalid_argument);
  CHECK_THROWS_AS(
      strata::device_segmented_sum(std::span<const int>(span_of(inverse)), span_of(rows), 2,
                                   std::span(span_of(sums).data(), 1), workspace, stream),
      std::invalid_argument);

  // Growing forgets the grouping: the buffers that held it may have been replaced.
  workspace.reserve(1 << 16, stream);
  CHECK(workspace.batch_size() == 0);
  CHECK(workspace.unique_count() == 0);
  CHECK_THROWS_WITH_AS(workspace.reserve(std::size_t{1} << 40, stream),
                       "DeviceDedupWorkspace::reserve: 1099511627776 ids exceed the limit of "
                       "2147483647 (INT_MAX for CUB, or the index type)",
                       std::invalid_argument);
}

TEST_CASE("int32 ids, int32 indices") {
  const Stream stream;
  check_type<std::int32_t, std::int32_t>(stream, "int32/int32");
}

TEST_CASE("int64 ids, int32 indices") {
  const Stream stream;
  check_type<std::int64_t, std::int32_t>(stream, "int64/int32");
}

TEST_CASE("int64 ids, int64 indices") {
  const Stream stream;
  check_type<std::int64_t, std::int64_t>(stream, "int64/int64");
}

TEST_CASE("uint64 ids, uint32 indices") {
  const Stream stream;
  check_type<std::uint64_t, std::uint32_t>(stream, "uint64/uint32");
}
