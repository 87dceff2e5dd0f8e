"""``tools/test.py --compile``: the same metrics and predictions as eager evaluation, the
detector's forward compiled once per kind of input, not once per batch; and the one-line
errors for a wrong ``compile`` value.

The compiled run uses ``backend='aot_eager'`` (``--cfg-options compile.backend=aot_eager``):
the tracing and the graphs of ``torch.compile`` with PyTorch's own kernels, a few seconds
instead of a minute of inductor code generation (docs/deployment.md).
"""
import glob
import pickle

import pytest
import torch
from helpers import load_tool, one_thread

from mmdeform.engine.compile import CompileConfigError, compile_options
from mmdeform.ops import library


def run_test_tool(config, checkpoint, options, work_dir, extra=()):
    out = work_dir / 'preds.pkl'
    with one_thread():
        metrics = load_tool('tools/test.py').main(
            [config, checkpoint, '--work-dir', str(work_dir), '--out', str(out), *extra,
             '--cfg-options', *options])
    with open(out, 'rb') as f:
        return metrics, pickle.load(f)


@pytest.mark.skipif(not library.REGISTERED, reason='needs our kernels as torch.library '
                    'operators (torch>=2.4 with the CPU extension built)')
def test_compiled_evaluation_equals_eager(tiny_checkpoint, tmp_path):
    config, checkpoint, options = tiny_checkpoint
    options = options + ['test_dataloader.batch_size=1']  # 8 batches, sizes vary
    eager_metrics, eager_preds = run_test_tool(config, checkpoint, options, tmp_path / 'eager')
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    try:
        metrics, preds = run_test_tool(config, checkpoint,
                                       options + ['compile.backend=aot_eager'],
                                       tmp_path / 'compiled', extra=['--compile'])
        graphs = counters['stats']['unique_graphs']
    finally:
        torch._dynamo.reset()
    # 8 images whose heights and widths differ: the first compilation is for the first
    # image's size, then one when the height varies and one when the width does (dynamo
    # makes a size symbolic once it has seen it change); the other 5 reuse them
    assert graphs == 3, graphs
    log = open(glob.glob(str(tmp_path / 'compiled' / '*' / '*.log'))[0]).read()
    assert 'torch.compile (backend aot_eager) of DeformableDETR.forward, every mode' in log
    assert metrics == eager_metrics
    assert len(preds) == len(eager_preds) == 8
    for eager, compiled in zip(eager_preds, preds):
        assert eager['img_id'] == compiled['img_id']
        for key in ('bboxes', 'scores', 'labels'):
            a, b = eager['pred_instances'][key], compiled['pred_instances'][key]
            assert a.shape == b.shape and a.numel() > 0
            assert (a.double() - b.double()).abs().max() <= 1e-4, (eager['img_id'], key)


@pytest.mark.parametrize('value,message', [
    ('yes', "config key compile: expected True, False or a dict of torch.compile arguments, "
            "got 'yes'"),
    (dict(backend='aot_eager', freezing=True),
     "config key compile: 'freezing' is not a torch.compile argument (expected some of "),
])
def test_wrong_compile_values_are_one_line_errors(value, message):
    with pytest.raises(CompileConfigError) as err:
        compile_options(value)
    assert str(err.value).startswith(message) and '\n' not in str(err.value)


def test_compile_values():
    assert compile_options(None) is None and compile_options(False) is None
    assert compile_options(True) == {}
    assert compile_options(dict(backend='aot_eager', dynamic=True)) == dict(
        backend='aot_eager', dynamic=True)


def tool_config(tool, argv):
    module = load_tool(tool)
    return module.build_config(module.parse_args(argv))


@pytest.mark.parametrize('extra,expected', [
    ([], dict(options=dict(freezing=True))),  # inductor: the weights are constants
    (['--cfg-options', 'compile.backend=aot_eager'], dict(backend='aot_eager')),
    (['--cfg-options', 'compile.mode=max-autotune'], dict(mode='max-autotune')),  # no options
])
def test_test_tool_compile_defaults(extra, expected, tmp_path):
    cfg = tool_config('tools/test.py', ['tests/data/configs/ddetr_shapes_tiny.py', 'x.pth',
                                        '--work-dir', str(tmp_path), '--compile', *extra])
    assert cfg.compile == expected


def test_train_tool_compile_and_freezing(tmp_path):
    config = 'tests/data/configs/ddetr_shapes_tiny.py'
    cfg = tool_config('tools/train.py', [config, '--work-dir', str(tmp_path), '--compile'])
    assert cfg.compile is True
    cfg = tool_config('tools/train.py', [config, '--work-dir', str(tmp_path)])
    assert 'compile' not in cfg
    with pytest.raises(CompileConfigError, match=r'^config key compile.options.freezing: True '
                       'makes the weights constants of the compiled graph, which training '
                       'changes'):
        tool_config('tools/train.py', [config, '--work-dir', str(tmp_path), '--compile',
                                       '--cfg-options', 'compile.options.freezing=True'])
