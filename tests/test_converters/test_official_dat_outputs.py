"""Official DAT / DAT++ weights, converted, against the official code's outputs (float64).

tests/data/dat_official_outputs.pt holds summaries of the four stage outputs
(before the detection backbone's output norms) of two official models,
computed once outside the suite. ``dat_mini`` and ``dat_pp_mini`` are the
official classes built from the official tiny configs with smaller arguments
(dims 32-256, two blocks of the official types per stage; their layouts are
tests/data/official_layouts/dat_mini.json and dat_pp_mini.json): in float64
PyTorch runs depthwise convolutions channel by channel on the CPU, which
makes the tiny DAT++ too slow for the suite. The official model gets
the weights that ``seeded_official_state`` (tools/model_converters/
compare_official_dat.py) derives from the key names and shapes alone, and runs
``seeded_input``, all in float64 (with float64 as the default dtype, since
v1's deformable blocks build a constant with ``torch.tensor``; in float32 it
moved the outputs by 6e-9). Here the same weights are rebuilt from the
committed layout, converted with ``convert_official_dat``, loaded strictly into
our ``DAT`` (the same smaller arguments, the rest from the tiny settings) and
run on the same input. Summaries (``summarise``): each output averaged over
channels (the whole map), over the map (every channel), and 512 evenly spaced
elements.

How the fixture was made: the official repository LeapLabTHU/DAT (``fetch``),
``models/`` and ``configs/`` of commit 566a593 (DAT, CVPR 2022) extracted to
/tmp/dat_v1 and of 32173fc (DAT++) to /tmp/dat_pp; torch 2.14.1 on the CPU,
timm 1.0.31 and einops 0.8.2 in a scratch directory (``pip install --no-deps
--target /tmp/dat_deps timm==1.0.31 einops==0.8.2 huggingface_hub safetensors``)::

    T=tools/model_converters/compare_official_dat.py F=tests/data/dat_official_outputs.pt
    L=tests/data/official_layouts S='--set dim_stem=32 --set dims=[32,64,128,256]
      --set depths=[2,2,2,2] --set heads=[1,2,4,8]'
    PYTHONPATH=/tmp/dat_deps python $T --repo /tmp/dat_v1 --config configs/dat_tiny.yaml \
        --arch dat_mini --commit 566a593 $S --set groups=[-1,-1,2,4] \
        --set stage_spec=[[L,S],[L,S],[L,D],[L,D]] --size 224 224 \
        --dump-layout $L/dat_mini.json --write-fixture $F
    PYTHONPATH=/tmp/dat_deps python $T --repo /tmp/dat_pp --config configs/dat_tiny.yaml \
        --arch dat_pp_mini --commit 32173fc $S --set groups=[1,1,2,4] \
        --set stage_spec=[[N,D],[N,D],[N,D],[D,D]] --size 96 144 \
        --dump-layout $L/dat_pp_mini.json --write-fixture $F

The official v1 code runs only at its 224 x 224 build size. DAT++ runs at
96 x 144: stage maps 24x36, 12x18, 6x9 (the neighbourhood blocks pad it to
their 7x7 window) and 3x5; not square, so an H/W mix-up shows. DAT++'s
neighbourhood blocks call natten 0.14.6's two functions, which do not build
against torch 2.14: the tool's row-by-row PyTorch stand-in (NATTEN's window
and bias rules) replaced them, so for those blocks the reference is that
stand-in. Everything else is the official code as committed.
"""
import json
import os

import pytest
import torch
from helpers import ROOT, load_tool

from mmdeform.converters import convert_official_dat
from mmdeform.models.backbones import DAT
from mmdeform.models.backbones.dat import ARCH_SETTINGS

FIXTURE = os.path.join(ROOT, 'tests', 'data', 'dat_official_outputs.pt')
LAYOUTS = os.path.join(ROOT, 'tests', 'data', 'official_layouts')
# the --set arguments above (v1's groups -1 of the window stages are unused: 1 here)
SMALLER = dict(dims=(32, 64, 128, 256), heads=(1, 2, 4, 8))
ARCHS = {
    'dat_mini': dict(ARCH_SETTINGS['dat_tiny'], **SMALLER, groups=(1, 1, 2, 4),
                     specs=(['L', 'S'], ['L', 'S'], ['L', 'D'], ['L', 'D'])),
    'dat_pp_mini': dict(ARCH_SETTINGS['dat_pp_tiny'], **SMALLER, groups=(1, 1, 2, 4),
                        specs=(['N', 'D'], ['N', 'D'], ['N', 'D'], ['D', 'D'])),
}
# Both sides compute in float64 and the stage outputs stay below 7; the official code
# and ours sum the same terms in other orders (einsum vs matmul, fused convolutions),
# which gives differences up to 1.2e-14 here. 1e-10 leaves room for other BLAS builds
# and thread counts, and still caught a float32 constant in the official code (6e-9,
# see above); a real difference (a swapped q/k below) gives more than 1e-2.
TOLERANCE = 1e-10


@pytest.fixture(scope='module')
def tool():
    return load_tool('tools/model_converters/compare_official_dat.py')


@pytest.fixture(scope='module')
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def converted(tool, arch):
    with open(os.path.join(LAYOUTS, f'{arch}.json')) as f:
        official = tool.seeded_official_state(json.load(f)['tensors'])
    state, report, _ = convert_official_dat(official, {})
    assert not report.unmapped
    return state


def deviations(tool, arch, state, expected, stages=4):
    """Largest |ours - official| of every summary of the first ``stages`` stage outputs."""
    model = DAT(ARCHS[arch], out_indices=tuple(range(stages)), drop_path_rate=0.0)
    skipped = tuple(f'norms.{i}.' for i in range(stages, 4))  # output norms of stages not run
    state = {k: v for k, v in state.items() if not k.startswith(skipped)}
    model.double().eval().load_state_dict(state, strict=True)
    x = tool.seeded_input(*expected['input_size'].tolist())
    ours = tool.summarise(tool.stage_outputs(model, x, False))
    assert len(ours) == 3 * stages
    return {k: (v - expected[k]).abs().max().item() for k, v in ours.items()}


def swap_q_and_k(state):
    """The converter mix-up the names-and-shapes test cannot see: every deformable
    block's query and key projections (same shapes) trade places."""
    out = dict(state)
    for key in state:
        if '.proj_q.' in key:
            out[key], out[key.replace('.proj_q.', '.proj_k.')] = \
                state[key.replace('.proj_q.', '.proj_k.')], state[key]
    return out


@pytest.mark.parametrize('arch, first_deformable_stage', [('dat_mini', 2), ('dat_pp_mini', 0)])
def test_converted_official_weights_reproduce_the_official_outputs(tool, fixture, arch,
                                                                   first_deformable_stage):
    expected = fixture[arch]
    state = converted(tool, arch)
    worst = deviations(tool, arch, state, expected)
    assert max(worst.values()) < TOLERANCE, worst

    # the mutation, run up to the first stage that has deformable blocks
    stages = first_deformable_stage + 1
    mutated = deviations(tool, arch, swap_q_and_k(state), expected, stages)
    for i in range(stages):
        largest = max(v for k, v in mutated.items() if k.startswith(f'stage{i}.'))
        if i < first_deformable_stage:
            assert largest < TOLERANCE, (i, mutated)
        else:
            assert largest > 1e-2, (i, mutated)
