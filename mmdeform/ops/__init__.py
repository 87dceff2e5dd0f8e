"""mmdeform's compiled ops: multi-scale deformable attention (C++ on ATen for the CPU,
Triton for CUDA; ``ms_deform_attn.py`` chooses) and the two products of DAT++'s
neighbourhood attention."""
from .ms_deform_attn import (BACKENDS, CPU_KERNEL_AVAILABLE, cpu_kernel_isa,
                             multi_scale_deformable_attn, select_backend, set_cpu_kernel_isa)
from .neighborhood_attn import NA_KERNEL_AVAILABLE, neighborhood_av, neighborhood_qk

__all__ = ['multi_scale_deformable_attn', 'BACKENDS', 'select_backend', 'CPU_KERNEL_AVAILABLE',
           'cpu_kernel_isa', 'set_cpu_kernel_isa', 'neighborhood_qk', 'neighborhood_av', 'NA_KERNEL_AVAILABLE']
