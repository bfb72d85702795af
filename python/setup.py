"""pip install ./python (from strata's source tree): builds strata_torch._C with PyTorch's own
extension machinery, against the headers of this checkout (../include) and the torch that runs
pip. Use --no-build-isolation so that the build sees that torch:

    python3 -m pip install --no-build-isolation ./python
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.normpath(os.path.join(HERE, "..", "include"))
if not os.path.isfile(os.path.join(INCLUDE, "strata", "torch", "comm.hpp")):
    raise SystemExit("strata_torch: build it from strata's source tree (../include is missing)")

# Thrust runs on the host (its sequential system): the CUDA toolkit's CCCL or Debian's
# libthrust-dev; Boost.MP11 and gloo's headers come from the system include directories.
thrust = [d for d in ("/usr/local/cuda/include/cccl", "/usr/include")
          if os.path.isfile(os.path.join(d, "thrust", "version.h"))]
if not thrust:
    raise SystemExit("strata_torch: Thrust not found (install libthrust-dev or the CUDA toolkit)")

setup(
    name="strata_torch",
    version="0.1.0",
    description="strata's hierarchical model averaging over torch.distributed process groups",
    packages=["strata_torch"],
    ext_modules=[
        CppExtension(
            "strata_torch._C",
            ["strata_torch/_C.cpp"],
            include_dirs=[INCLUDE, thrust[0]],
            define_macros=[("USE_C10D_GLOO", None),
                           ("THRUST_DEVICE_SYSTEM", "THRUST_DEVICE_SYSTEM_CPP")],
            extra_compile_args=["-std=c++20", "-O2"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
