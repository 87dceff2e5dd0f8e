"""mmdeform's compiled ops: multi-scale deformable attention on the CPU (C++ on ATen)."""
from .ms_deform_attn import (CPU_KERNEL_AVAILABLE, cpu_kernel_isa, multi_scale_deformable_attn,
                             set_cpu_kernel_isa)

__all__ = ['multi_scale_deformable_attn', 'CPU_KERNEL_AVAILABLE', 'cpu_kernel_isa',
           'set_cpu_kernel_isa']
