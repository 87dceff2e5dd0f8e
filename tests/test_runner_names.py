"""Two Runners in one process within the same second (tests, notebooks, sweeps): mmengine
names the logger and the message hub after the config and that second, and would hand the
second run the first one's logger (its handlers and log file), and mmengine's registry hands
any second run the first one's visualizer. mmdeform's Runner gives the second run its own."""
import logging
import os

from mmengine.config import Config

from mmdeform.engine import Runner
from mmdeform.utils import register_all_modules

SOAK = 'tests/data/configs/detr_shapes_soak.py'


def _log_files(logger):
    return [h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)]


def test_same_second_runners_get_their_own_logger(tmp_path, monkeypatch):
    import mmengine.runner.runner as mmengine_runner
    register_all_modules(init_default_scope=False)
    # both runs start in "the same second"
    monkeypatch.setattr(mmengine_runner.time, 'strftime', lambda *a, **k: '20261202_120000')
    runners = []
    for run in ('a', 'b'):
        cfg = Config.fromfile(SOAK)
        cfg.work_dir = str(tmp_path / run)
        runners.append(Runner.from_cfg(cfg))
    first, second = runners
    assert second.logger is not first.logger
    assert second.message_hub is not first.message_hub
    assert second.experiment_name == first.experiment_name + '_2'
    assert all(f.startswith(str(tmp_path / 'b')) for f in _log_files(second.logger))
    # mmengine's registry would return the first run's 'visualizer', writing the second
    # run's scalars (vis_data/*.json, what tools/analysis_tools/plot_curve.py reads) into a
    # directory of the first run
    assert second.visualizer is not first.visualizer
    for run, runner in (('a', first), ('b', second)):
        dirs = [b._save_dir for b in runner.visualizer._vis_backends.values()]
        assert dirs and all(d.startswith(str(tmp_path / run) + os.sep) for d in dirs), dirs
    second.logger.info('only in the second run')
    for h in second.logger.handlers:
        h.flush()
    log_a, = _log_files(first.logger)
    log_b, = _log_files(second.logger)
    assert 'only in the second run' in open(log_b).read()
    assert 'only in the second run' not in open(log_a).read()
