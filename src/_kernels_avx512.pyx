# The lenet_fast kernels compiled for the "avx512" instruction-set level: setup.py builds this module
# with that level's compiler flags and -DLENET_ISA_AVX512; the code itself lives in kernels.pxi.
include "kernels.pxi"
