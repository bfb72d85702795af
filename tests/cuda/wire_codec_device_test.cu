// The device wire kernels of strata/kernels/wire_codec.cuh against the host codec, bit for bit:
// the encoding of a - p straight from several tensors (sizes that are not multiples of 256, one
// empty, one all zeros, table chunks that straddle int8 blocks), with and without an anchor, in
// the flat layout and in compressed_average's layouts for 2 to 64 members (whole chunks of
// padding included); the owner's step (mean and re-encoded mean); the decoding into the flat
// result; and a whole compressed_average of g members run through the three kernels against the
// host compressed_average on the local backend. For float and double. Values include negative
// zero, subnormals, bf16 and fp16 rounding ties and, for bf16 and fp16, values that overflow to
// infinity; no NaNs, whose payloads the GPU does not keep.
//
// Without a GPU it checks the layouts and the refusals of bad arguments, which touch no device
// (test suite "host"), then exits 77 (skipped).
#include <doctest/doctest.h>

#include <strata/comm/compressed_average.hpp>
#include <strata/comm/local.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/kernels/fused.hpp>
#include <strata/kernels/multi_tensor.cuh>
#include <strata/kernels/wire_codec.cuh>
#include <strata/kernels/wire_codec.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "stream.hpp"

namespace wire_device {

using strata::WireFormat;
using strata::WireLayout;

constexpr WireFormat formats[] = {WireFormat::bf16, WireFormat::fp16, WireFormat::int8};

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "float" : "double";
}

std::string describe(const WireLayout& l) {
  return std::string(strata::wire_name(l.format)) + " values=" + std::to_string(l.values) +
         " chunk_values=" + std::to_string(l.chunk_values) +
         " chunk_bytes=" + std::to_string(l.chunk_bytes) + " chunks=" + std::to_string(l.chunks);
}

template <class T>
strata::DeviceBuffer<T> to_device(const std::vector<T>& host, cudaStream_t stream) {
  strata::DeviceBuffer<T> d(host.size() > 0 ? host.size() : 1);
  if (!host.empty()) {
    strata::cuda_check("cudaMemcpyAsync", -1,
                       cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T),
                                       cudaMemcpyHostToDevice, stream));
  }
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  return d;
}

template <class T>
std::vector<T> to_host(const T* d, std::size_t n, cudaStream_t stream) {
  std::vector<T> h(n);
  if (n != 0) {
    strata::cuda_check("cudaMemcpyAsync", -1,
                       cudaMemcpyAsync(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  return h;
}

// Mismatches are counted rather than stopping the test, so that one run shows every failing case.
template <class T>
std::size_t mismatches(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) return std::numeric_limits<std::size_t>::max();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    bad += std::memcmp(&got[i], &want[i], sizeof(T)) != 0 ? 1 : 0;
  }
  return bad;
}

// --- Host references: compressed_average's own loops, chunk by chunk --------------------------

template <class T>
std::vector<std::uint8_t> host_encode(const std::vector<T>& values, const WireLayout& l) {
  std::vector<std::uint8_t> out(l.bytes(), 0);
  std::vector<T> chunk(l.chunk_values);
  for (std::size_t j = 0; j < l.chunks; ++j) {
    for (std::size_t i = 0; i < l.chunk_values; ++i) {
      const std::size_t k = j * l.chunk_values + i;
      chunk[i] = k < l.values ? values[k] : T(0);
    }
    strata::wire_encode(l.format, chunk.data(), l.chunk_values, out.data() + j * l.chunk_bytes);
  }
  return out;
}

template <class Acc>
void host_average(const std::vector<std::uint8_t>& received, const WireLayout& l,
                  std::vector<Acc>& mean, std::vector<std::uint8_t>& encoded) {
  mean.assign(l.chunk_values, Acc(0));
  std::vector<Acc> chunk(l.chunk_values);
  for (std::size_t m = 0; m < l.chunks; ++m) {
    strata::wire_decode(l.format, received.data() + m * l.chunk_bytes, l.chunk_values,
                        chunk.data());
    for (std::size_t i = 0; i < l.chunk_values; ++i) mean[i] += chunk[i];
  }
  const Acc inv = Acc(1) / static_cast<Acc>(l.chunks);
  for (Acc& v : mean) v *= inv;
  encoded.assign(l.chunk_bytes, 0);
  strata::wire_encode(l.format, mean.data(), l.chunk_values, encoded.data());
}

template <class T>
std::vector<T> host_decode(const std::vector<std::uint8_t>& wire, const WireLayout& l) {
  std::vector<T> out(l.values), chunk(l.chunk_values);
  for (std::size_t j = 0; j < l.chunks; ++j) {
    strata::wire_decode(l.format, wire.data() + j * l.chunk_bytes, l.chunk_values, chunk.data());
    for (std::size_t i = 0; i < l.chunk_values && j * l.chunk_values + i < l.values; ++i) {
      out[j * l.chunk_values + i] = chunk[i];
    }
  }
  return out;
}

// --- Data ----------------------------------------------------------------------------------------

// Values whose rounding shows a codec's corners; the last three overflow a 16-bit format, and
// are left out where values are summed (+inf plus -inf is a NaN, whose bits differ). int8 gets
// only zeros: a lone subnormal or infinite block maximum makes the scale's reciprocal overflow,
// where the host codec's result rests on a float-to-int conversion of NaN.
float special(std::mt19937& gen, WireFormat f, bool overflow) {
  static constexpr float corners[] = {
      -0.0f,
      1e-39f,          // float subnormal
      -3e-8f,          // fp16 subnormal
      6.1035156e-5f,   // fp16's smallest normal
      1.00390625f,     // 1 + 2^-8: a bf16 tie, to even (down)
      1.01171875f,     // 1 + 3 * 2^-8: a bf16 tie, to even (up)
      1.00048828125f,  // 1 + 2^-11: an fp16 tie
      65519.0f,        // fp16: rounds to 65504
      -65520.0f,       // fp16: rounds to -infinity
      3e38f,          std::numeric_limits<float>::infinity(),
  };
  if (f == WireFormat::int8) return std::uniform_int_distribution<int>(0, 1)(gen) ? -0.0f : 0.0f;
  const std::size_t last = std::size(corners) - (overflow ? 1 : 4);
  return corners[std::uniform_int_distribution<std::size_t>(0, last)(gen)];
}

// Parameters p and anchors a, tensor by tensor: a = p + a small step mostly; now and then a
// corner value with p = 0, so that a - p is exactly the corner; tensor `zero` has a == p.
template <class T>
void make_tensors(const std::vector<std::size_t>& sizes, std::size_t zero, WireFormat f,
                  bool overflow, unsigned seed, std::vector<std::vector<T>>& p,
                  std::vector<std::vector<T>>& a) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> value(-100, 100), step(-1, 1);
  std::uniform_int_distribution<int> pick(0, 31);
  p.assign(sizes.size(), {});
  a.assign(sizes.size(), {});
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    for (std::size_t i = 0; i < sizes[t]; ++i) {
      const T x = static_cast<T>(value(gen));
      if (t == zero) {
        p[t].push_back(x);
        a[t].push_back(x);
      } else if (pick(gen) == 0) {
        p[t].push_back(T(0));
        a[t].push_back(static_cast<T>(special(gen, f, overflow)));
      } else {
        p[t].push_back(x);
        a[t].push_back(static_cast<T>(x + step(gen)));
      }
    }
  }
}

template <class T>
std::vector<T> flatten(const std::vector<std::vector<T>>& tensors) {
  std::vector<T> flat;
  for (const auto& t : tensors) flat.insert(flat.end(), t.begin(), t.end());
  return flat;
}

// Random finite values, encoded by the host: contributions as the all-to-all delivers them.
template <class T>
std::vector<std::uint8_t> random_wire(const WireLayout& l, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> value(-50, 50);
  std::vector<T> values(l.chunks * l.chunk_values);
  for (T& v : values) {
    v = std::uniform_int_distribution<int>(0, 31)(gen) == 0
            ? static_cast<T>(l.format == WireFormat::int8 ? -0.0f : 1e-39f)
            : static_cast<T>(value(gen));
  }
  WireLayout all = l;
  all.values = values.size();
  return host_encode(values, all);
}

const std::vector<std::size_t> tensor_sizes{1, 1000, 0, 70001, 33, 600, 257, 255};
constexpr std::size_t zero_tensor = 5;  // 600 values: at least two whole int8 blocks of zeros

// Chunks of 1000 values (int8: three whole blocks and a partial one) with 12 spare bytes after
// each and one chunk of padding only: a layout compressed_average never uses, but a valid one.
WireLayout spaced_layout(WireFormat f, std::size_t n, std::size_t chunks) {
  const std::size_t c = 1000;
  return {f, n, c, 4 * ((strata::wire_bytes(f, c) + 3) / 4) + 12, chunks};
}

std::vector<WireLayout> layouts_for(WireFormat f, std::size_t n) {
  std::vector<WireLayout> layouts{strata::flat_wire_layout(f, n),
                                  spaced_layout(f, n, n / 1000 + 2)};
  for (const std::size_t g : {2, 3, 8, 64}) {
    layouts.push_back(strata::compressed_average_layout(f, n, g));
  }
  return layouts;
}

// --- The cases -----------------------------------------------------------------------------------

template <class T>
void check_encode() {
  cuda_test::Stream stream;
  for (const WireFormat f : formats) {
    std::vector<std::vector<T>> p, a;
    make_tensors<T>(tensor_sizes, zero_tensor, f, true, 7 + static_cast<unsigned>(f), p, a);
    std::vector<strata::DeviceBuffer<T>> device_p;
    std::vector<std::span<T>> spans;
    for (const auto& t : p) device_p.push_back(to_device(t, stream));
    for (std::size_t t = 0; t < p.size(); ++t) spans.emplace_back(device_p[t].data(), p[t].size());
    const std::vector<T> flat_p = flatten(p), flat_a = flatten(a);
    std::vector<T> delta(flat_p.size());
    for (std::size_t k = 0; k < delta.size(); ++k) delta[k] = flat_a[k] - flat_p[k];
    strata::DeviceBuffer<T> anchor = to_device(flat_a, stream);

    // Table chunks of 1000 values straddle int8 blocks; the default ones are whole tensors here
    // but for the largest.
    for (const std::size_t chunk_elements : {std::size_t{1000}, strata::default_chunk_elements}) {
      const strata::FusedPlan<T> plan(spans, chunk_elements);
      const strata::DeviceChunkTable<T> table(plan, stream);
      for (const WireLayout& l : layouts_for(f, plan.total_elements())) {
        for (const bool with_anchor : {true, false}) {
          strata::DeviceBuffer<std::uint8_t> wire(l.bytes());
          // A pattern no encoding leaves: every byte must be written.
          REQUIRE(cudaMemsetAsync(wire.data(), 0xA5, l.bytes(), stream) == cudaSuccess);
          strata::device_wire_encode(
              table,
              with_anchor ? std::span<const T>(anchor.data(), flat_a.size()) : std::span<const T>{},
              l, wire.span(), stream);
          const auto got = to_host(wire.data(), l.bytes(), stream);
          const auto want = host_encode(with_anchor ? delta : flat_p, l);
          INFO(type_name<T>(), " ", describe(l), " table chunks of ", chunk_elements,
               with_anchor ? " a - p" : " p");
          CHECK(mismatches(got, want) == 0);
        }
      }
    }
  }
}

template <class Acc>
void check_average() {
  cuda_test::Stream stream;
  for (const WireFormat f : formats) {
    for (const std::size_t n : {std::size_t{1}, std::size_t{1000}, std::size_t{72147}}) {
      for (const std::size_t g : {2, 3, 8}) {
        const WireLayout l =
            n == 1 ? spaced_layout(f, 0, g) : strata::compressed_average_layout(f, n, g);
        const auto received = random_wire<Acc>(l, static_cast<unsigned>(n + 31 * g));
        const strata::DeviceBuffer<std::uint8_t> d_received = to_device(received, stream);
        strata::DeviceBuffer<Acc> mean(l.chunk_values);
        strata::DeviceBuffer<std::uint8_t> encoded(l.chunk_bytes);
        REQUIRE(cudaMemsetAsync(encoded.data(), 0xA5, l.chunk_bytes, stream) == cudaSuccess);
        strata::device_wire_average(std::span<const std::uint8_t>(d_received.data(), l.bytes()), l,
                                    mean.span(), encoded.span(), stream);
        std::vector<Acc> want_mean;
        std::vector<std::uint8_t> want_encoded;
        host_average(received, l, want_mean, want_encoded);
        INFO(type_name<Acc>(), " ", describe(l));
        CHECK(mismatches(to_host(mean.data(), l.chunk_values, stream), want_mean) == 0);
        CHECK(mismatches(to_host(encoded.data(), l.chunk_bytes, stream), want_encoded) == 0);

        // Either output alone.
        REQUIRE(cudaMemsetAsync(encoded.data(), 0xA5, l.chunk_bytes, stream) == cudaSuccess);
        strata::device_wire_average(std::span<const std::uint8_t>(d_received.data(), l.bytes()), l,
                                    std::span<Acc>{}, encoded.span(), stream);
        CHECK(mismatches(to_host(encoded.data(), l.chunk_bytes, stream), want_encoded) == 0);
        REQUIRE(cudaMemsetAsync(mean.data(), 0xA5, l.chunk_values * sizeof(Acc), stream) ==
                cudaSuccess);
        strata::device_wire_average(std::span<const std::uint8_t>(d_received.data(), l.bytes()), l,
                                    mean.span(), std::span<std::uint8_t>{}, stream);
        CHECK(mismatches(to_host(mean.data(), l.chunk_values, stream), want_mean) == 0);
      }
    }
  }
}

template <class T>
void check_decode() {
  cuda_test::Stream stream;
  for (const WireFormat f : formats) {
    for (const std::size_t n : {std::size_t{1}, std::size_t{255}, std::size_t{72147}}) {
      for (const WireLayout& l : layouts_for(f, n)) {
        const auto wire = random_wire<T>(l, static_cast<unsigned>(n + l.chunks));
        const strata::DeviceBuffer<std::uint8_t> d_wire = to_device(wire, stream);
        strata::DeviceBuffer<T> out(n);
        strata::device_wire_decode(std::span<const std::uint8_t>(d_wire.data(), l.bytes()), l,
                                   out.span(), stream);
        INFO(type_name<T>(), " ", describe(l));
        CHECK(mismatches(to_host(out.data(), n, stream), host_decode<T>(wire, l)) == 0);
      }
    }
  }
}

// g members' compressed_average on one device: each member encodes its a - p from its tensors,
// the all-to-all and the all-gather are device copies, each owner runs the owner's step. Every
// member's result must be bitwise the host compressed_average's of the same differences.
template <class T>
void check_whole_average(std::size_t g) {
  cuda_test::Stream stream;
  for (const WireFormat f : formats) {
    std::vector<std::vector<T>> deltas(g);
    std::vector<strata::DeviceBuffer<T>> params, anchors;
    std::vector<strata::DeviceChunkTable<T>> tables;
    std::size_t n = 0;
    for (std::size_t m = 0; m < g; ++m) {
      std::vector<std::vector<T>> p, a;
      make_tensors<T>(tensor_sizes, zero_tensor, f, false, 100 + static_cast<unsigned>(m), p, a);
      const std::vector<T> flat_p = flatten(p), flat_a = flatten(a);
      n = flat_p.size();
      for (std::size_t k = 0; k < n; ++k) deltas[m].push_back(flat_a[k] - flat_p[k]);
      params.push_back(to_device(flat_p, stream));
      anchors.push_back(to_device(flat_a, stream));
      std::vector<std::span<T>> spans;
      std::size_t at = 0;
      for (const std::size_t s : tensor_sizes) {
        spans.emplace_back(params[m].data() + at, s);
        at += s;
      }
      tables.emplace_back(strata::FusedPlan<T>(spans, 1000), stream);
    }
    const WireLayout l = strata::compressed_average_layout(f, n, g);
    std::vector<strata::DeviceBuffer<std::uint8_t>> send, received, mine;
    for (std::size_t m = 0; m < g; ++m) {
      send.emplace_back(l.bytes());
      received.emplace_back(l.bytes());
      mine.emplace_back(l.chunk_bytes);
      strata::device_wire_encode(tables[m], std::span<const T>(anchors[m].data(), n), l,
                                 send[m].span(), stream);
    }
    for (std::size_t m = 0; m < g; ++m) {
      for (std::size_t o = 0; o < g; ++o) {  // member m's chunk o goes to owner o
        REQUIRE(cudaMemcpyAsync(received[o].data() + m * l.chunk_bytes,
                                send[m].data() + o * l.chunk_bytes, l.chunk_bytes,
                                cudaMemcpyDeviceToDevice, stream) == cudaSuccess);
      }
    }
    strata::DeviceBuffer<std::uint8_t> gathered(l.bytes());
    using Acc = std::conditional_t<(sizeof(T) > sizeof(float)), T, float>;
    for (std::size_t o = 0; o < g; ++o) {
      strata::device_wire_average(std::span<const std::uint8_t>(received[o].data(), l.bytes()), l,
                                  std::span<Acc>{}, mine[o].span(), stream);
      REQUIRE(cudaMemcpyAsync(gathered.data() + o * l.chunk_bytes, mine[o].data(), l.chunk_bytes,
                              cudaMemcpyDeviceToDevice, stream) == cudaSuccess);
    }
    strata::DeviceBuffer<T> out(n);
    strata::device_wire_decode(std::span<const std::uint8_t>(gathered.data(), l.bytes()), l,
                               out.span(), stream);
    const std::vector<T> got = to_host(out.data(), n, stream);

    std::vector<std::vector<T>> want(g, std::vector<T>(n));
    strata::LocalWorld(static_cast<int>(g)).run([&](strata::LocalComm& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      strata::compressed_average(comm, std::span<const T>(deltas[r]), std::span<T>(want[r]), f);
    });
    INFO(type_name<T>(), " ", strata::wire_name(f), " over ", g, " members");
    for (std::size_t m = 0; m < g; ++m) CHECK(mismatches(got, want[m]) == 0);
  }
}

}  // namespace wire_device

TEST_SUITE("host") {
  TEST_CASE("wire layouts: the flat one, compressed_average's, and the refused ones") {
    using strata::WireFormat;
    using strata::WireLayout;
    const WireLayout flat = strata::flat_wire_layout(WireFormat::int8, 300);
    CHECK(flat.chunks == 1);
    CHECK(flat.bytes() == strata::wire_bytes(WireFormat::int8, 300));
    CHECK(strata::wire_layout_error(flat) == nullptr);
    for (const WireFormat f : wire_device::formats) {
      for (const std::size_t n : {std::size_t{1}, std::size_t{255}, std::size_t{1000},
                                  std::size_t{72147}, std::size_t{1} << 20}) {
        for (const std::size_t g : {2, 3, 8, 64}) {
          const WireLayout l = strata::compressed_average_layout(f, n, g);
          INFO(wire_device::describe(l));
          CHECK(strata::wire_layout_error(l) == nullptr);
          CHECK(l.chunks * l.chunk_values >= n);
          CHECK(l.chunk_bytes % 4 == 0);
          CHECK(2 * (g - 1) * l.chunk_bytes == strata::compressed_average_bytes(f, n, g));
          if (f == WireFormat::int8) CHECK(l.chunk_values % strata::int8_block == 0);
        }
      }
    }
    CHECK_THROWS_AS((void)strata::compressed_average_layout(WireFormat::bf16, 10, 0),
                    std::invalid_argument);

    WireLayout bad = strata::flat_wire_layout(WireFormat::bf16, 10);
    bad.format = WireFormat::native;
    CHECK(strata::wire_layout_error(bad) != nullptr);
    bad = strata::flat_wire_layout(WireFormat::bf16, 10);
    bad.values = 11;  // more values than the chunk holds
    CHECK(strata::wire_layout_error(bad) != nullptr);
    bad = strata::flat_wire_layout(WireFormat::int8, 10);
    bad.chunk_bytes = 10;  // no room for the scale
    CHECK(strata::wire_layout_error(bad) != nullptr);
    bad = strata::compressed_average_layout(WireFormat::bf16, 10, 5);
    bad.chunk_bytes = 6;  // chunks off 32-bit words
    CHECK(strata::wire_layout_error(bad) != nullptr);
    bad.chunks = std::numeric_limits<std::size_t>::max();
    CHECK(strata::wire_layout_error(bad) != nullptr);
  }

  TEST_CASE("the status functions and the throwing ones refuse bad arguments before any launch") {
    using strata::WireFormat;
    const cudaStream_t stream = nullptr;
    const strata::WireLayout l = strata::compressed_average_layout(WireFormat::fp16, 100, 4);
    strata::WireLayout native = l;
    native.format = WireFormat::native;
    // Host buffers: nothing here may reach the device.
    std::vector<std::uint32_t> words(l.bytes() / 4 + 1);
    auto* bytes = reinterpret_cast<std::uint8_t*>(words.data());
    std::vector<float> out(100);

    CHECK(strata::cuda::wire_decode(bytes, native, out.data(), stream) == cudaErrorInvalidValue);
    CHECK(strata::cuda::wire_decode(bytes + 2, l, out.data(), stream) == cudaErrorInvalidValue);
    CHECK(strata::cuda::wire_decode<float>(nullptr, l, out.data(), stream) ==
          cudaErrorInvalidValue);
    CHECK(strata::cuda::wire_average<float>(bytes, native, nullptr, bytes, stream) ==
          cudaErrorInvalidValue);
    CHECK(strata::cuda::wire_average<float>(nullptr, l, out.data(), nullptr, stream) ==
          cudaErrorInvalidValue);
    CHECK(strata::cuda::wire_encode<float>(strata::ChunkTable<float>{}, nullptr, l, bytes,
                                           stream) == cudaErrorInvalidValue);  // 0 values, not 100

    const std::span<const std::uint8_t> wire(bytes, l.bytes());
    CHECK_THROWS_AS(strata::device_wire_decode(wire, native, std::span<float>(out), stream),
                    std::invalid_argument);
    CHECK_THROWS_AS(
        strata::device_wire_decode(wire.first(l.bytes() - 1), l, std::span<float>(out), stream),
        std::invalid_argument);
    CHECK_THROWS_AS(strata::device_wire_decode(std::span<const std::uint8_t>(bytes + 1, l.bytes()),
                                               l, std::span<float>(out), stream),
                    std::invalid_argument);
    CHECK_THROWS_AS(strata::device_wire_decode(wire, l, std::span<float>(out).first(99), stream),
                    std::invalid_argument);
    CHECK_THROWS_AS(strata::device_wire_average(wire, l, std::span<float>(out),
                                                std::span<std::uint8_t>{}, stream),
                    std::invalid_argument);  // 100 means for a chunk of 26
    CHECK_THROWS_AS(
        strata::device_wire_average(wire, l, std::span<float>{},
                                    std::span<std::uint8_t>(bytes, l.chunk_bytes - 1), stream),
        std::invalid_argument);
    const strata::DeviceChunkTable<float> empty;
    const std::span<std::uint8_t> writable(bytes, l.bytes());
    CHECK_THROWS_AS(
        strata::device_wire_encode(empty, std::span<const float>{}, l, writable, stream),
        std::invalid_argument);  // the layout's 100 values, the table's none
  }
}

TEST_CASE_TEMPLATE("the encoding of a - p from several tensors is the host codec's, byte for byte",
                   T, float, double) {
  wire_device::check_encode<T>();
}

TEST_CASE_TEMPLATE("the owner's step is the host's: decode, sum in member order, scale, re-encode",
                   Acc, float, double) {
  wire_device::check_average<Acc>();
}

TEST_CASE_TEMPLATE("the decoding into the flat result is the host codec's", T, float, double) {
  wire_device::check_decode<T>();
}

TEST_CASE_TEMPLATE("a whole compressed_average through the kernels is the host's, bit for bit", T,
                   float, double) {
  for (const std::size_t g : {2, 3, 8}) wire_device::check_whole_average<T>(g);
}
