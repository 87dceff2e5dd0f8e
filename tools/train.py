"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] ...``.

The arguments are mmdet's. Distributed: ``tools/dist_train.sh CONFIG GPUS``.
"""
import argparse
import os

from mmengine.config import Config, DictAction

from mmdeform.engine import Runner
from mmdeform.engine.compile import check_training_options, compile_options
from mmdeform.utils import check_dataset_paths, load_config, register_all_modules


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a DETR-family detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr linearly from auto_scale_lr.base_batch_size '
                             'to the actual total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest '
                             'checkpoint in the work dir')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the detector\'s forward, for the training losses and '
                             'the validation predictions (cfg.compile = True unless the config '
                             'sets a dict of torch.compile arguments, e.g. --cfg-options '
                             'compile.backend=aot_eager); docs/deployment.md')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.bbox_head.num_classes=3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise KeyError(f'{args.config} has no auto_scale_lr.base_batch_size, which '
                           '--auto-scale-lr needs')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.compile and not cfg.get('compile'):
        cfg.compile = True
    options = compile_options(cfg.get('compile'))  # a wrong value is a one-line error now
    if options is not None:
        check_training_options(options)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_default_scope=False)
    cfg = build_config(args)
    check_dataset_paths(cfg, splits=('train_dataloader', 'val_dataloader'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    # Leave the process group before the interpreter tears down: gloo's threads, still
    # joinable at exit, otherwise abort a rank now and then ("terminate called without an
    # active exception", exit -6) after a run that finished.
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
