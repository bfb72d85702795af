// Undefines the glog macros that PyTorch's headers bring (c10 logs through glog in Debian's
// build) and that doctest defines too. Include after PyTorch's headers, before doctest.
#pragma once

#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LE
#undef CHECK_LT
#undef CHECK_GE
#undef CHECK_GT
