// The main of the doctest programs in tests/cuda. With a CUDA device it runs every test case.
// Without one it runs only the test suite "host" (checks that need no GPU, such as a kernel's
// agent run on the host), and then exits 77, which CTest reports as skipped: the device cases
// did not run. A CUDA installation that cannot run (a driver too old for the runtime) is neither:
// the program reports it and fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <strata/cuda/error.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  bool device = false;
  try {
    device = strata::cuda_device_present();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  if (!device) context.addFilter("test-suite", "host");
  const int failed = context.run();
  if (failed != 0 || context.shouldExit()) return failed;
  if (!device) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  return 0;
}
