// DeviceEmbeddingExchange on the host double of NCCL and CUDA (fake_runtime.hpp): the stream
// runs on its own worker thread, so any host read of device memory before the stream reached it
// would show as a wrong result (and a race under TSan). The device path must give exactly the
// host path's results (EmbeddingExchange with de-duplication sums in the same orders), and a
// problem on one rank must reach every rank and change no table.
#include <doctest/doctest.h>
#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/embedding/device_exchange.hpp>
#include <strata/embedding/exchange.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fake_runtime.hpp"

namespace {

using FakeNccl = strata::BasicNcclComm<fake::Runtime>;

// Runs each step's Thrust work in stream order on the fake stream, with the host policy.
struct HostStreamLauncher {
  template <class F>
  void launch(fake::Stream* s, F f) {
    fake::Runtime::launch_host(s, [f] { f(thrust::host); });
  }
};

using Device = strata::DeviceEmbeddingExchange<FakeNccl, double, HostStreamLauncher>;

template <class T>
using Buf = strata::DeviceBuffer<T, fake::Runtime>;

template <class T>
void to_device(FakeNccl& comm, Buf<T>& dst, const std::vector<T>& src) {
  dst.resize(std::max<std::size_t>(src.size(), 1), comm.rank());
  if (src.empty()) return;
  strata::PinnedBuffer<T, fake::Runtime> staging(src.size());
  std::copy(src.begin(), src.end(), staging.data());
  fake::Runtime::check("memcpy", comm.rank(),
                       fake::Runtime::memcpy_async(dst.data(), staging.data(),
                                                   src.size() * sizeof(T), comm.stream()));
  comm.synchronize(comm.stream());
}

template <class T>
std::vector<T> to_host(FakeNccl& comm, const Buf<T>& src, std::size_t n) {
  std::vector<T> out(n);
  if (n == 0) return out;
  strata::PinnedBuffer<T, fake::Runtime> staging(n);
  fake::Runtime::check(
      "memcpy", comm.rank(),
      fake::Runtime::memcpy_async(staging.data(), src.data(), n * sizeof(T), comm.stream()));
  comm.synchronize(comm.stream());
  std::copy(staging.data(), staging.data() + n, out.begin());
  return out;
}

double init(std::size_t j, std::size_t i, std::size_t d) {
  return std::cos(0.001 * double(i + 1) * double(d + 1) + 0.1 * double(j + 1));
}

// Skewed ids with duplicates; `bad` puts one id outside its table on rank `bad_rank`.
std::vector<std::int64_t> make_ids(const strata::ShardingPlan& plan, std::size_t rank,
                                   std::size_t samples, std::size_t hotness, std::size_t step,
                                   int bad_rank = -1) {
  std::vector<std::int64_t> ids;
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    for (std::size_t s = 0; s < samples; ++s) {
      for (std::size_t k = 0; k < hotness; ++k) {
        const std::uint64_t x = (step + 1) * 7919u + (rank + 1) * 104729u + (s + 1) * 31u +
                                (k + 1) * 1000003u + j * 17u;
        const std::uint64_t h = x * 0x9E3779B97F4A7C15ull;
        ids.push_back(std::int64_t((h >> 33) % plan.table(j).rows >> ((h >> 13) % 4)));
      }
    }
  }
  if (bad_rank == int(rank) && !ids.empty()) ids[ids.size() / 2] = std::int64_t(1) << 40;
  return ids;
}

struct Setup {
  std::string plan_text;
  int world;
  strata::Pooling pooling;
  std::vector<std::size_t> batch;  // per rank
  std::size_t hotness;
  std::size_t dense = 0;  // elements of the caller's dense gradients in the fused all-reduce
};

// The frequent rows of each hybrid table: every third row from the last, up to the placement's
// count or half the rows, then the smallest rows not taken (any rows will do: results do not
// depend on which rows are replicated).
strata::FrequentSets some_frequent(const strata::ShardingPlan& plan) {
  strata::FrequentSets f;
  f.rows.resize(plan.num_tables());
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    if (!plan.hybrid(j)) continue;
    const std::size_t rows = plan.table(j).rows;
    const std::size_t n = plan.table(j).placement.frequent == strata::auto_place
                              ? rows / 2
                              : std::min(plan.table(j).placement.frequent, rows);
    std::vector<bool> taken(rows, false);
    for (std::size_t k = 0; k * 3 < rows && f.rows[j].size() < n; ++k) {
      f.rows[j].push_back(std::int64_t(rows - 1 - 3 * k));
      taken[rows - 1 - 3 * k] = true;
    }
    for (std::size_t r = 0; f.rows[j].size() < n; ++r) {
      if (!taken[r]) f.rows[j].push_back(std::int64_t(r));
    }
  }
  return f;
}

void run_same_as_host(const Setup& setup) {
  const auto plan = strata::ShardingPlan::parse(setup.plan_text, std::size_t(setup.world),
                                                std::size_t(setup.world % 2 == 0 ? 2 : 1));
  strata::LocalWorld(setup.world).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    const std::size_t r = std::size_t(host.rank());
    const strata::FrequentSets frequent = some_frequent(plan);
    strata::EmbeddingExchange<strata::LocalComm, double> ref(
        host, plan, strata::ExchangeOptions{setup.pooling, true, false}, frequent);
    std::size_t max_b = 1;
    for (std::size_t b : setup.batch) max_b = std::max(max_b, b);
    strata::DeviceExchangeOptions opt;
    opt.pooling = setup.pooling;
    opt.max_samples = max_b;
    opt.max_hotness = setup.hotness;
    Device dev(comm, plan, opt, frequent);
    ref.initialize(init);
    dev.initialize(init);
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    const std::size_t B = setup.batch[r], K = setup.hotness, width = ref.output_width();
    Buf<double> d_dense;
    for (std::size_t step = 0; step < 3; ++step) {
      const auto ids = make_ids(plan, r, B, K, step);
      std::vector<double> out(B * width), grad(B * width);
      ref.forward({ids, plan.num_tables(), B, K}, out);
      Buf<std::int64_t> d_ids;
      Buf<double> d_out(std::max<std::size_t>(B * width, 1)), d_grad;
      to_device(comm, d_ids, ids);
      dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), B, K,
                  std::span<double>(d_out.data(), B * width), comm.stream());
      const auto got = to_host(comm, d_out, B * width);
      for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(got[i] == out[i]);
      for (std::size_t i = 0; i < grad.size(); ++i)
        grad[i] = std::sin(0.01 * double(i + 1) + 0.3 * double(r + step));
      // The caller's dense gradients ride in the same all-reduce on both paths.
      std::vector<double> dense(setup.dense);
      for (std::size_t i = 0; i < dense.size(); ++i) dense[i] = std::cos(double(i + 7 * r + step));
      to_device(comm, d_dense, dense);
      const std::vector<std::span<double>> dense_spans{std::span<double>(dense)};
      ref.backward(grad, strata::Sgd{0.1}, dense_spans);
      to_device(comm, d_grad, grad);
      dev.backward(std::span<const double>(d_grad.data(), grad.size()),
                   strata::DeviceSgd<double>{0.1}, std::span<double>(d_dense.data(), setup.dense),
                   comm.stream());
      dev.check(comm.stream());
      const auto dense_back = to_host(comm, d_dense, setup.dense);
      for (std::size_t i = 0; i < dense.size(); ++i) REQUIRE(dense_back[i] == dense[i]);
    }
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      const auto full = ref.gather_table(j, 0);
      const auto mine = dev.local_table(j);
      std::vector<double> all(mine.size() * std::size_t(setup.world));
      host.all_gather(std::span<const double>(mine), std::span<double>(all));
      if (r != 0) continue;
      // Each element lives on exactly one rank (others hold 0), a replica on every rank: a whole
      // data-parallel table, a hybrid table's frequent rows.
      std::vector<bool> everywhere(plan.table(j).rows, plan.replicated(j));
      for (std::int64_t row : frequent.rows[j]) everywhere[std::size_t(row)] = true;
      for (std::size_t i = 0; i < full.size(); ++i) {
        if (everywhere[i / plan.table(j).width]) {
          for (int q = 0; q < setup.world; ++q)
            REQUIRE(all[std::size_t(q) * mine.size() + i] == full[i]);
        } else {
          double v = 0;
          for (int q = 0; q < setup.world; ++q) v += all[std::size_t(q) * mine.size() + i];
          REQUIRE(v == full[i]);
        }
      }
    }
  });
}

}  // namespace

TEST_CASE("device embedding exchange (host double): the host path's results, bit for bit") {
  SUBCASE("one rank") {
    run_same_as_host({"0: 100x8 table; 1: 30x4 dp", 1, strata::Pooling::sum, {5}, 2});
  }
  SUBCASE("four ranks, every placement, an empty batch, mean pooling") {
    run_same_as_host(
        {"0: 1000x16 table; 1: 500x16 column:2; 2: 64x8 row; 3: 3x8 row; "
         "4: 100x8 table-row; 5: 40x4 dp",
         4,
         strata::Pooling::mean,
         {6, 0, 3, 5},
         3});
  }
  SUBCASE("eight ranks, sum pooling") {
    run_same_as_host({"0: 300x8 column:4; 1: 200x8 row; 2: 50x8 table@7; 3: 20x4 dp",
                      8,
                      strata::Pooling::sum,
                      {4, 4, 1, 0, 7, 2, 3, 5},
                      2});
  }
  SUBCASE("hybrid tables of every inner placement, dense gradients fused, four ranks") {
    run_same_as_host(
        {"0: 100x8 hybrid/10; 1: 60x8 hybrid:table/60; 2: 40x8 hybrid:column:2/1; "
         "3: 30x4 hybrid:table-row/0; 4: 10x4 dp; 5: 50x4 hybrid",
         4,
         strata::Pooling::mean,
         {5, 3, 0, 6},
         3,
         37});
  }
  SUBCASE("dense gradients alone, three ranks") {
    run_same_as_host({"0: 100x8 row", 3, strata::Pooling::sum, {2, 4, 1}, 1, 1000});
  }
}

TEST_CASE(
    "device embedding exchange (host double): a bad id on one rank is reported on every "
    "rank and changes nothing") {
  const auto plan = strata::ShardingPlan::parse("0: 100x8 row; 1: 50x4 table; 2: 10x4 dp", 4);
  for (const bool each_step : {true, false}) {
    CAPTURE(each_step);
    strata::LocalWorld(4).run([&](strata::LocalComm& host) {
      FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
      strata::DeviceExchangeOptions opt;
      opt.max_samples = 4;
      opt.max_hotness = 2;
      opt.check_each_step = each_step;
      Device dev(comm, plan, opt);
      dev.initialize(init);
      std::vector<std::vector<double>> before;
      for (std::size_t j = 0; j < 3; ++j) before.push_back(dev.local_table(j));
      const strata::DeviceGuard<fake::Runtime> on(comm.device());
      const auto ids = make_ids(plan, std::size_t(host.rank()), 4, 2, 0, /*bad_rank=*/2);
      Buf<std::int64_t> d_ids;
      to_device(comm, d_ids, ids);
      Buf<double> d_out(4 * dev.output_width()), d_grad;
      to_device(comm, d_grad, std::vector<double>(4 * dev.output_width(), 1.0));
      std::string what;
      try {
        dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), 4, 2,
                    std::span<double>(d_out.data(), 4 * dev.output_width()), comm.stream());
        dev.backward(std::span<const double>(d_grad.data(), 4 * dev.output_width()),
                     strata::DeviceSgd<double>{1.0}, comm.stream());
        dev.check(comm.stream());
      } catch (const strata::usage_error& e) {
        what = e.cause();
      }
      CHECK(what == "rank 2: table 1, lookup 4: id 1099511627776 is outside the table's 50 rows");
      for (std::size_t j = 0; j < 3; ++j) CHECK(dev.local_table(j) == before[j]);
    });
  }
}

TEST_CASE(
    "device embedding exchange (host double): too many unique ids for the capacity is "
    "reported on every rank") {
  const auto plan = strata::ShardingPlan::parse("0: 1000x8 table@0", 2);
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    strata::DeviceExchangeOptions opt;
    opt.max_samples = 8;
    opt.ids_per_peer = 3;
    Device dev(comm, plan, opt);
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    std::vector<std::int64_t> ids{1, 2, 3, 4, 1, 2, 3, 4};  // 4 unique for rank 0 from each rank
    if (host.rank() == 1) ids = {5, 5, 5, 5, 5, 5, 5, 5};   // 1 unique
    Buf<std::int64_t> d_ids;
    to_device(comm, d_ids, ids);
    Buf<double> d_out(8 * 8);
    std::string what;
    try {
      dev.forward(std::span<const std::int64_t>(d_ids.data(), 8), 8, 1,
                  std::span<double>(d_out.data(), 64), comm.stream());
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what ==
          "rank 0: 4 unique ids for one owner exceed the capacity of 3 "
          "(DeviceExchangeOptions::ids_per_peer)");
  });
}

TEST_CASE(
    "device embedding exchange (host double): a batch of the wrong shape on one rank is "
    "reported on every rank") {
  const auto plan = strata::ShardingPlan::parse("0: 100x8 row; 1: 10x4 dp", 3);
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    strata::DeviceExchangeOptions opt;
    opt.max_samples = 4;
    Device dev(comm, plan, opt);
    dev.initialize(init);
    const auto before = dev.local_table(0);
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    // Rank 1 brings 6 samples: more than the exchange was built for.
    const std::size_t samples = host.rank() == 1 ? 6 : 4;
    const std::vector<std::int64_t> ids(2 * samples, 3);
    Buf<std::int64_t> d_ids;
    to_device(comm, d_ids, ids);
    Buf<double> d_out(samples * dev.output_width());
    std::string what;
    try {
      dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), samples, 1,
                  std::span<double>(d_out.data(), samples * dev.output_width()), comm.stream());
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what ==
          "rank 1: the batch holds 12 ids for 6 samples of hotness 1 (12 needed, and an output "
          "of as many samples), built for at most 4 samples of hotness 1");
    // The backward after it updates nothing, on any rank.
    Buf<double> d_grad;
    to_device(comm, d_grad, std::vector<double>(samples * dev.output_width(), 1.0));
    dev.backward(std::span<const double>(d_grad.data(), samples * dev.output_width()),
                 strata::DeviceSgd<double>{1.0}, comm.stream());
    CHECK(dev.local_table(0) == before);
  });
}

TEST_CASE(
    "device embedding exchange (host double): a bad id in a replicated table is reported "
    "like any other") {
  const auto plan = strata::ShardingPlan::parse("0: 10x2 row; 1: 4x2 dp", 2);
  for (const bool each_step : {true, false}) {
    CAPTURE(each_step);
    strata::LocalWorld(2).run([&](strata::LocalComm& host) {
      FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
      strata::DeviceExchangeOptions opt;
      opt.max_samples = 1;
      opt.check_each_step = each_step;
      Device dev(comm, plan, opt);
      dev.initialize(init);
      const auto before = dev.local_table(1);
      const strata::DeviceGuard<fake::Runtime> on(comm.device());
      const std::vector<std::int64_t> ids{3, host.rank() == 1 ? 7 : 2};
      Buf<std::int64_t> d_ids;
      to_device(comm, d_ids, ids);
      Buf<double> d_out(dev.output_width()), d_grad;
      to_device(comm, d_grad, std::vector<double>(dev.output_width(), 1.0));
      std::string what;
      try {
        dev.forward(std::span<const std::int64_t>(d_ids.data(), 2), 1, 1,
                    std::span<double>(d_out.data(), dev.output_width()), comm.stream());
        dev.backward(std::span<const double>(d_grad.data(), dev.output_width()),
                     strata::DeviceSgd<double>{1.0}, comm.stream());
        dev.check(comm.stream());
      } catch (const strata::usage_error& e) {
        what = e.cause();
      }
      CHECK(what == "rank 1: table 1, lookup 0: id 7 is outside the table's 4 rows");
      CHECK(dev.local_table(1) == before);
    });
  }
}

TEST_CASE(
    "device embedding exchange (host double): check() reports a problem of any step since "
    "the last check, once") {
  const auto plan = strata::ShardingPlan::parse("0: 10x2 row; 1: 4x2 table@0", 2);
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    strata::DeviceExchangeOptions opt;
    opt.max_samples = 1;
    opt.check_each_step = false;
    Device dev(comm, plan, opt);
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    Buf<double> d_out(dev.output_width()), d_grad;
    to_device(comm, d_grad, std::vector<double>(dev.output_width(), 1.0));
    for (const std::int64_t bad : {std::int64_t(99), std::int64_t(1)}) {  // step 2 is clean
      const std::vector<std::int64_t> ids{host.rank() == 1 ? bad : 0, 1};
      Buf<std::int64_t> d_ids;
      to_device(comm, d_ids, ids);
      dev.forward(std::span<const std::int64_t>(d_ids.data(), 2), 1, 1,
                  std::span<double>(d_out.data(), dev.output_width()), comm.stream());
      dev.backward(std::span<const double>(d_grad.data(), dev.output_width()),
                   strata::DeviceSgd<double>{1.0}, comm.stream());
      comm.synchronize(comm.stream());
    }
    std::string what;
    try {
      dev.check(comm.stream());
    } catch (const strata::usage_error& e) {
      what = e.cause();
    }
    CHECK(what == "rank 1: table 0, lookup 0: id 99 is outside the table's 10 rows");
    CHECK_NOTHROW(dev.check(comm.stream()));  // read once, then cleared
  });
}

TEST_CASE(
    "device embedding exchange (host double): steps on a stream of the caller's, and an "
    "empty batch of hotness 0") {
  const auto plan = strata::ShardingPlan::parse("0: 50x4 row; 1: 20x2 column:2; 2: 6x2 dp", 2);
  strata::LocalWorld(2).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    strata::EmbeddingExchange<strata::LocalComm, double> ref(host, plan);
    strata::DeviceExchangeOptions opt;
    opt.max_samples = 3;
    opt.max_hotness = 2;
    opt.check_each_step = false;
    Device dev(comm, plan, opt);
    ref.initialize(init);
    dev.initialize(init);
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    fake::Stream* mine = nullptr;
    fake::Runtime::check("stream", host.rank(), fake::Runtime::stream_create(&mine));
    const bool empty = host.rank() == 1;
    const std::size_t B = empty ? 0 : 3, K = empty ? 0 : 2, width = dev.output_width();
    const auto ids = make_ids(plan, std::size_t(host.rank()), B, K, 0);
    std::vector<double> out(B * width), grad(B * width, 0.25);
    ref.forward({ids, plan.num_tables(), B, K}, out);
    ref.backward(grad, strata::Sgd{0.5});
    Buf<std::int64_t> d_ids;
    to_device(comm, d_ids, ids);
    Buf<double> d_out(std::max<std::size_t>(B * width, 1)), d_grad;
    to_device(comm, d_grad, grad);
    dev.forward(std::span<const std::int64_t>(d_ids.data(), ids.size()), B, K,
                std::span<double>(d_out.data(), B * width), mine);
    dev.backward(std::span<const double>(d_grad.data(), grad.size()),
                 strata::DeviceSgd<double>{0.5}, mine);
    // No wait by the caller: local_table waits for the stream the steps ran on.
    for (std::size_t j = 0; j < plan.num_tables(); ++j) {
      const auto full = ref.gather_table(j, 0);
      const auto local = dev.local_table(j);
      std::vector<double> all(local.size() * 2);
      host.all_gather(std::span<const double>(local), std::span<double>(all));
      if (host.rank() != 0) continue;
      for (std::size_t i = 0; i < full.size(); ++i) {
        const double v = plan.replicated(j) ? all[i] : all[i] + all[local.size() + i];
        REQUIRE(v == full[i]);
      }
    }
    CHECK_NOTHROW(dev.check(mine));
    comm.synchronize(mine);
    fake::Runtime::check("stream", host.rank(), fake::Runtime::stream_destroy(mine));
  });
}

TEST_CASE(
    "device embedding exchange (host double): the statistics phase counts on the device "
    "what the host counts") {
  const auto plan =
      strata::ShardingPlan::parse("0: 100x8 hybrid; 1: 30x4 row; 2: 50x4 hybrid:table", 3);
  strata::LocalWorld(3).run([&](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, strata::NcclOptions{});
    const strata::DeviceGuard<fake::Runtime> on(comm.device());
    strata::FrequencyCounts on_host(plan), on_device(plan);
    HostStreamLauncher launcher;
    for (std::size_t step = 0; step < 3; ++step) {
      const std::size_t B = 4 + std::size_t(host.rank()), K = 2;
      const auto ids = make_ids(plan, std::size_t(host.rank()), B, K, step);
      on_host.add({ids, plan.num_tables(), B, K});
      Buf<std::int64_t> d_ids;
      to_device(comm, d_ids, ids);
      strata::count_lookups_on_device(comm, launcher, on_device,
                                      std::span<const std::int64_t>(d_ids.data(), ids.size()), B, K,
                                      comm.stream());
    }
    on_host.reduce(host);
    on_device.reduce(host);
    for (std::size_t j : {std::size_t(0), std::size_t(2)}) {
      for (std::size_t row = 0; row < plan.table(j).rows; ++row)
        REQUIRE(on_device.count(j, row) == on_host.count(j, row));
      CHECK(on_device.ranked(j) == on_host.ranked(j));
    }
    // An id outside its table is refused.
    std::vector<std::int64_t> bad(plan.num_tables() * 2, 1);
    bad[1] = 100;
    Buf<std::int64_t> d_bad;
    to_device(comm, d_bad, bad);
    CHECK_THROWS_WITH_AS(
        strata::count_lookups_on_device(comm, launcher, on_device,
                                        std::span<const std::int64_t>(d_bad.data(), bad.size()), 2,
                                        1, comm.stream()),
        "FrequencyCounts::add_counts: table 0: id 100 is outside the table's 100 rows",
        std::invalid_argument);
  });
}
