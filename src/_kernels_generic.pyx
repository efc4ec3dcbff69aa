# The lenet_fast kernels compiled for the "generic" instruction-set level: setup.py builds this module
# with that level's compiler flags and -DLENET_ISA_GENERIC; the code itself lives in kernels.pxi.
include "kernels.pxi"
