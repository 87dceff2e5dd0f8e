"""mmdeform's compiled ops: multi-scale deformable attention (C++ on ATen for the CPU,
Triton for CUDA; ``ms_deform_attn.py`` chooses) and the two products of DAT++'s
neighbourhood attention (likewise; ``neighborhood_attn.py`` chooses)."""
from .ms_deform_attn import (BACKENDS, CPU_KERNEL_AVAILABLE, cpu_kernel_isa, exporting,
                             multi_scale_deformable_attn, select_backend, set_cpu_kernel_isa)
from .neighborhood_attn import (NA_BACKENDS, NA_KERNEL_AVAILABLE, neighborhood_av,
                                neighborhood_qk, select_na_backend)

__all__ = ['multi_scale_deformable_attn', 'BACKENDS', 'select_backend', 'CPU_KERNEL_AVAILABLE',
           'cpu_kernel_isa', 'set_cpu_kernel_isa', 'neighborhood_qk', 'neighborhood_av',
           'NA_BACKENDS', 'NA_KERNEL_AVAILABLE', 'select_na_backend', 'exporting']
