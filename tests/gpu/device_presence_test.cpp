// cuda_device_present's decision, on any machine: only "no device" and "no driver installed" mean
// that there is no GPU; any other status of cudaGetDeviceCount is a CUDA installation that cannot
// run, which throws instead of looking like a machine without a GPU.
#include <doctest/doctest.h>

#include <strata/cuda/error.hpp>

#include <string>

TEST_CASE("cuda_absent: no device, or no driver at all, is the only \"no GPU\"") {
  using strata::detail::cuda_absent;
  // No device: whatever the driver.
  CHECK(cuda_absent(cudaErrorNoDevice, 0));
  CHECK(cuda_absent(cudaErrorNoDevice, 13000));
  // The runtime's "insufficient driver" is no driver when the driver reports version 0, and a
  // driver too old for the runtime otherwise.
  CHECK(cuda_absent(cudaErrorInsufficientDriver, 0));
  CHECK_FALSE(cuda_absent(cudaErrorInsufficientDriver, 12020));
  CHECK_FALSE(cuda_absent(cudaErrorInsufficientDriver, -1));  // the driver's version unknown
  // Everything else is a broken installation, with or without a driver.
  for (const cudaError_t e :
       {cudaErrorInitializationError, cudaErrorSystemDriverMismatch,
        cudaErrorCompatNotSupportedOnDevice, cudaErrorNotSupported, cudaErrorUnknown,
        cudaErrorDevicesUnavailable, cudaErrorOperatingSystem}) {
    CAPTURE(static_cast<int>(e));
    CHECK_FALSE(cuda_absent(e, 0));
    CHECK_FALSE(cuda_absent(e, 13000));
  }
  static_assert(strata::detail::cuda_absent(cudaErrorNoDevice, 0));
}

TEST_CASE("cuda_version_text: CUDA's version numbers as major.minor") {
  CHECK(strata::detail::cuda_version_text(13000) == "13.0");
  CHECK(strata::detail::cuda_version_text(12020) == "12.2");
  CHECK(strata::detail::cuda_version_text(11080) == "11.8");
}

TEST_CASE("cuda_device_present on this machine agrees with the runtime's own answers") {
  // The expectation, from the two runtime calls the decision rests on.
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  (void)cudaGetLastError();
  int driver = -1;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1;
  (void)cudaGetLastError();
  CAPTURE(static_cast<int>(status));
  CAPTURE(driver);

  std::string threw;
  bool present = false;
  try {
    present = strata::cuda_device_present();
  } catch (const strata::cuda_error& e) {
    threw = e.what();
    CHECK(e.operation() == "cudaGetDeviceCount");
    CHECK(e.code() == status);
    CHECK(e.rank() == -1);
  }
  if (status == cudaSuccess) {
    CHECK(threw.empty());
    CHECK(present == (devices > 0));
  } else if (status == cudaErrorNoDevice ||
             (status == cudaErrorInsufficientDriver && driver == 0)) {
    CHECK(threw.empty());
    CHECK_FALSE(present);
  } else {
    CHECK(threw.find("runtime ") != std::string::npos);  // the message names both versions
  }
}
