"""tools/gpu_check.sh's plumbing without running its steps (the whole CPU run,
``--device cpu``, takes minutes): arguments, the budget, the report and the exit status."""
import subprocess

from helpers import PYTHON, ROOT

STEPS = ['environment', 'ops-tests', 'parity-tests', 'data', 'train-detr', 'train-ddetr',
         'train-dino', 'train-dino_dat', 'benchmark-op', 'benchmark-model']


def _run(*args):
    return subprocess.run(['bash', 'tools/gpu_check.sh', *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_spent_budget_fails_every_step_in_the_report(tmp_path):
    proc = _run('--python', PYTHON, '--budget', 1, '--out', tmp_path / 'check')
    assert proc.returncode == 1
    report = tmp_path / 'check' / 'report.md'
    assert proc.stdout.strip().splitlines()[-1] == str(report)
    rows = [line for line in report.read_text().splitlines() if line.startswith('| ')][2:]
    assert rows[0].startswith(f'| install | skipped (--python {PYTHON})')
    assert [row.split(' | ')[0][2:] for row in rows[1:]] == STEPS
    assert all('| not run: out of time |' in row for row in rows[1:])


def test_bad_arguments_are_named():
    proc = _run('--device', 'gpu')
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_check.sh: --device must be cuda or cpu, got 'gpu'"
    proc = _run('--gpus', 1)
    assert proc.returncode == 2 and "unknown argument '--gpus'" in proc.stderr
