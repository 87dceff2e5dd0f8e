// The kernels with SSE2 only: any x86-64 (and the generic vector type elsewhere).
#include "ms_deform_attn_kernel.h"

MMDEFORM_MSDA_DEFINE_ENTRY_POINTS(DEFAULT)
