"""What every checkpoint converter shares: reading, the mapping report, atomic writing."""
import os
import os.path as osp
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from mmdeform.utils.checkpoint import checkpoint_family, load_checkpoint_file
from mmdeform.utils.errors import CheckpointFamilyError, CheckpointReadError, InputError

StateDict = Dict[str, Tensor]


@dataclass
class ConversionReport:
    """What a conversion did with every source tensor."""
    mapped: Dict[str, str] = field(default_factory=dict)  # source -> target
    dropped: Dict[str, str] = field(default_factory=dict)  # source -> reason
    unmapped: List[str] = field(default_factory=list)
    added: Dict[str, str] = field(default_factory=dict)  # target -> why it was filled
    notes: List[str] = field(default_factory=list)  # printed after the counts

    def summary(self) -> str:
        lines = [f'mapped {len(self.mapped)} tensors, dropped {len(self.dropped)}, '
                 f'filled {len(self.added)}, unmapped {len(self.unmapped)}']
        reasons: Dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f'  dropped {n}: {reason}' for reason, n in sorted(reasons.items())]
        whys: Dict[str, int] = {}
        for why in self.added.values():
            whys[why] = whys.get(why, 0) + 1
        lines += [f'  filled {n}: {why}' for why, n in sorted(whys.items())]
        lines += [f'  unmapped: {key}' for key in self.unmapped]
        lines += [f'note: {note}' for note in self.notes]
        return '\n'.join(lines)


class UnmappedKeysError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ''


def progress(items):
    """Iterate ``items`` (a sized collection) with a progress bar on a terminal."""
    items = list(items)
    if not sys.stdout.isatty() or not items:
        yield from items
        return
    from mmengine.utils import ProgressBar
    bar = ProgressBar(len(items))
    for item in items:
        yield item
        bar.update()
    sys.stdout.write('\n')


Rule = Tuple[str, Optional[str]]  # (source prefix, target prefix or None to drop)


def rename_by_prefix(state_dict: StateDict, rules: List[Rule],
                     drop_reasons: Optional[Dict[str, str]] = None,
                     keep_unmatched: bool = True) -> Tuple[StateDict, ConversionReport]:
    """Rename keys by the first matching prefix rule.

    Args:
        rules: ``(source_prefix, target_prefix)``; a ``None`` target drops the key
            with the reason given in ``drop_reasons[source_prefix]``.
        keep_unmatched: keys that no rule matches keep their name (True) or are
            reported as unmapped (False).
    """
    drop_reasons = drop_reasons or {}
    report = ConversionReport()
    out: StateDict = {}
    for key, value in progress(state_dict.items()):
        for src, dst in rules:
            if key.startswith(src):
                if dst is None:
                    report.dropped[key] = drop_reasons.get(src, 'not used by mmdeform')
                else:
                    new_key = dst + key[len(src):]
                    out[new_key] = value
                    report.mapped[key] = new_key
                break
        else:
            if keep_unmatched:
                out[key] = value
                report.mapped[key] = key
            else:
                report.unmapped.append(key)
    return out, report


def _entry(checkpoint: dict, dotted: str):
    """``checkpoint['a']['b']`` for ``'a.b'``; None where any level is missing."""
    for part in dotted.split('.'):
        if not isinstance(checkpoint, dict) or part not in checkpoint:
            return None
        checkpoint = checkpoint[part]
    return checkpoint


def read_state_dict(path: str,
                    entries: Tuple[str, ...] = ('state_dict', 'model')) -> Tuple[StateDict, dict]:
    """Load ``path`` with the untrusted loader; return its weights and the rest.

    The weights are the first of ``entries`` (dotted for nested dicts, e.g.
    ``'ema.module'``) that the file holds, or the file itself if it is a flat dict
    of tensors."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    checkpoint = load_checkpoint_file(path, map_location='cpu', trusted=False)
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a '
                                  'dict of weights')
    for key in entries:
        weights = _entry(checkpoint, key)
        if isinstance(weights, dict):
            return dict(weights), checkpoint
    if all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint), {}
    expected = ' or '.join(f'"{key}"' for key in entries)
    raise CheckpointReadError(f'checkpoint {path} holds no weights: expected a {expected} '
                              f'entry, or a flat dict of tensors (top-level keys: '
                              f'{sorted(checkpoint)[:10]})')


def save_checkpoint_atomic(checkpoint: dict, path: str) -> None:
    """Write to a temporary file in the same directory, then rename into place."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.partial-', suffix='.pth', dir=directory)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def run_converter(convert: Callable[[StateDict, dict], Tuple[StateDict, ConversionReport, dict]],
                  src: str, dst: str) -> ConversionReport:
    """Read ``src``, convert, fail on unmapped keys, print the summary, write ``dst``."""
    state_dict, checkpoint = read_state_dict(
        src, getattr(convert, 'weights_entries', ('state_dict', 'model')))
    expected = getattr(convert, 'source_family', None)
    found = checkpoint_family(state_dict.keys())
    if expected and found and expected not in found:
        raise CheckpointFamilyError(f'{src} looks like {found} weights; this converter reads '
                                    f'{expected} checkpoints')
    converted, report, meta = convert(state_dict, checkpoint)
    print(f'{src} -> {dst}')
    print(report.summary())
    if report.unmapped:
        raise UnmappedKeysError(f'{len(report.unmapped)} tensors of {src} have no place in '
                                f'mmdeform: {report.unmapped[:10]}')
    meta = dict(meta, converted_from=osp.basename(src))
    save_checkpoint_atomic(dict(state_dict=converted, meta=meta), dst)
    return report
