"""mmdeform: DETR-family detectors on mmengine, mmcv and mmdet 3.x."""
import os
import platform
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
CSRC = 'mmdeform/ops/csrc'
# ms_deform_attn_kernel.h compiled for AVX2 + FMA: only this file gets these flags, and the
# extension runs it only on CPUs that have both (see ms_deform_attn_cpu.cpp).
AVX2_FLAGS = ['-mavx2', '-mfma', '-DCPU_CAPABILITY=AVX2', '-DCPU_CAPABILITY_AVX2']


def cpu_extension():
    """The CPU kernels of multi-scale deformable attention and of DAT++'s neighbourhood
    attention (mmdeform/ops), or nothing with ``MMDEFORM_NO_EXT=1``.

    It needs torch at build time (``pip install --no-build-isolation -e .``, as
    tools/install.sh does). A compiler error fails the install, with the compiler's
    output, rather than leaving a silently 15-20x slower install; ``MMDEFORM_NO_EXT=1``
    installs without the kernels, and mmdeform then warns once and falls back to the
    PyTorch paths.
    """
    if os.environ.get('MMDEFORM_NO_EXT') == '1':
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        raise SystemExit('mmdeform: torch is not importable at build time, so the CPU kernels '
                         'cannot be built: install torch first and use pip install '
                         '--no-build-isolation, or set MMDEFORM_NO_EXT=1 to install without '
                         'them')
    x86 = platform.machine().lower() in ('x86_64', 'amd64')
    sources = [f'{CSRC}/ms_deform_attn_cpu.cpp', f'{CSRC}/kernel_default.cpp',
               f'{CSRC}/neighborhood_attn.cpp']
    macros = []
    if x86:
        sources.append(f'{CSRC}/kernel_avx2.cpp')
        macros.append(('MMDEFORM_MSDA_HAVE_AVX2', None))
    # -fopenmp: at::parallel_for is inline and runs serially without it; the extension
    # then shares the libgomp.so.1 that torch has already loaded.
    ext = CppExtension(
        'mmdeform.ops._msda_cpu', sources, define_macros=macros,
        extra_compile_args=['-O3', '-g0', '-fopenmp', '-Wno-unknown-pragmas',
                            '-DCPU_CAPABILITY=DEFAULT'],
        extra_link_args=['-fopenmp'])

    class Build(BuildExtension):
        """Adds the AVX2 flags to kernel_avx2.cpp alone (hence no ninja: it compiles
        every file with the same flags)."""

        def build_extension(self, extension):
            compile_one = self.compiler._compile

            def compile_with_isa(obj, src, ext_, cc_args, extra_postargs, pp_opts):
                if src.endswith('kernel_avx2.cpp'):
                    extra_postargs = [a for a in extra_postargs
                                      if a != '-DCPU_CAPABILITY=DEFAULT'] + AVX2_FLAGS
                return compile_one(obj, src, ext_, cc_args, extra_postargs, pp_opts)

            self.compiler._compile = compile_with_isa
            try:
                super().build_extension(extension)
            finally:
                self.compiler._compile = compile_one

    return dict(ext_modules=[ext], cmdclass={'build_ext': Build.with_options(use_ninja=False)})


def read_version():
    text = (HERE / 'mmdeform' / 'version.py').read_text()
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def read_requirements(name):
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]


setup(
    name='mmdeform',
    version=read_version(),
    description='DETR, Deformable DETR and DINO-style detectors for the OpenMMLab stack',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'demo', 'tests', 'tests.*')),
    python_requires='>=3.9',
    # Ranges, as mmdeform.utils.version_check enforces them; requirements/runtime.txt
    # pins the tested stack that tools/install.sh installs.
    install_requires=['torch>=2.0', 'mmengine>=0.7.1,<1.0', 'mmcv>=2.0.0rc4,<2.2.0',
                      'mmdet>=3.0.0,<3.4.0', 'scipy', 'pycocotools', 'setuptools<81'],
    extras_require={'tests': read_requirements('tests.txt')},
    license='Apache-2.0',
    zip_safe=False,
    **cpu_extension(),
)
