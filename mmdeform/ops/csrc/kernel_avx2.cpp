// The kernels with AVX2 and FMA; setup.py compiles this file alone with -mavx2 -mfma and
// CPU_CAPABILITY=AVX2, and ms_deform_attn_cpu.cpp calls it only where the CPU has both.
#include "ms_deform_attn_kernel.h"

MMDEFORM_MSDA_DEFINE_ENTRY_POINTS(AVX2)
