"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--show-dir DIR] ...``.

Prints the COCO metrics of the config's test evaluator. ``--show-dir`` writes
a PNG per image with the ground truth and the predictions. ``--deploy`` fuses the
model after loading the checkpoint (:class:`~mmdeform.engine.hooks.DeployHook`).
"""
import argparse
import os

from mmengine.config import Config, DictAction

from mmdeform.engine import Runner
from mmdeform.engine.compile import compile_options
from mmdeform.utils import check_dataset_paths, load_config, register_all_modules


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a DETR-family detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or http(s) URL (downloaded once into '
                        'the cache; a -<sha256 prefix>.pth name is verified)')
    parser.add_argument('--work-dir', help='the directory to save the evaluation metrics')
    parser.add_argument('--out', type=str, help='dump the predictions to a pickle file (.pkl)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory (relative to the work dir\'s timestamp '
                        'folder, or absolute) where painted images are saved')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the boxes drawn by --show/--show-dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the detector\'s forward (cfg.compile, as in '
                             'mmengine; by default inductor with freezing), e.g. with '
                             '--cfg-options compile.backend=aot_eager; docs/deployment.md')
    parser.add_argument('--deploy', action='store_true',
                        help='fuse the model for inference after loading the checkpoint '
                             '(switch_to_deploy: RT-DETR\'s RepVGG blocks and conv+BN pairs); '
                             'the log says what was fused')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg: Config, args) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise KeyError(f'{args.config} has no default_hooks.visualization, which --show and '
                       "--show-dir need: add dict(type='DetVisualizationHook')")
    vis = hooks.visualization
    vis.draw = True
    vis.score_thr = args.score_thr
    if args.show:
        vis.show = True
        vis.wait_time = args.wait_time
    if args.show_dir:
        vis.test_out_dir = args.show_dir


def build_config(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    # evaluating weights that do not fit the model measures nothing: refuse them
    cfg.strict_load = True
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {args.out!r}: the output file must be a .pkl file')
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) \
            else list(cfg.test_evaluator)
        cfg.test_evaluator.append(dict(type='DumpDetResults', out_file_path=args.out))
    if args.deploy:
        # the checkpoint's state_dict holds the EMA weights, which testing loads into the
        # model and the EMA copy alike: without the hook nothing changes, and its swaps
        # would meet the fused model's other parameters (DeployHook)
        cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                            if not str(h.get('type', '')).endswith('EMAHook')]
        cfg.custom_hooks.append(dict(type='DeployHook'))
    options = compile_options(cfg.get('compile'))  # a wrong value is a one-line error now
    if args.compile:
        options = options or {}
        if options.get('backend', 'inductor') == 'inductor' and 'mode' not in options:
            # inference only: the weights become constants of the graph, so inductor folds
            # the frozen batch norms and packs the weights once (docs/deployment.md)
            options['options'] = dict(options.get('options') or {})
            options['options'].setdefault('freezing', True)
        cfg.compile = options
    return cfg


def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_default_scope=False)
    cfg = build_config(args)
    check_dataset_paths(cfg, splits=('test_dataloader',))
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    summary = ', '.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}'
                        for k, v in metrics.items())
    print(f'Evaluation of {args.checkpoint}: {summary}')
    return metrics


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
