"""mmdeform's compiled ops (C++ on ATen): multi-scale deformable attention on the CPU and
the two products of DAT++'s neighbourhood attention."""
from .ms_deform_attn import (CPU_KERNEL_AVAILABLE, cpu_kernel_isa, multi_scale_deformable_attn,
                             set_cpu_kernel_isa)
from .neighborhood_attn import NA_KERNEL_AVAILABLE, neighborhood_av, neighborhood_qk

__all__ = ['multi_scale_deformable_attn', 'CPU_KERNEL_AVAILABLE', 'cpu_kernel_isa',
           'set_cpu_kernel_isa', 'neighborhood_qk', 'neighborhood_av', 'NA_KERNEL_AVAILABLE']
