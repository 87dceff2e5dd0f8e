"""Checkpoint loading under an explicit trust decision.

``torch.load`` in torch >= 2.6 only rebuilds tensors and a few plain types,
and every checkpoint that mmengine's Runner writes also holds its
``message_hub`` (``HistoryBuffer`` objects, numpy scalars); the official
DETR / Deformable-DETR files hold an ``argparse.Namespace``. mmdeform loads
files at one of two levels of trust:

* **trusted** -- resuming a run (``--resume``, ``resume = True``): the file is
  this user's own training state, written by the Runner into the work
  directory; it is unpickled in full, as the Runner needs ``message_hub``.
* **untrusted** -- everything else (``load_from``, ``tools/test.py CKPT``,
  downloads, converter inputs): a restricted unpickler rebuilds tensors,
  containers, numpy arrays and scalars and ``argparse.Namespace``; any other
  object is replaced by an inert :class:`OpaqueObject` that only records its
  class name. Nothing named in the file is imported or executed, so a
  malicious checkpoint can at worst load wrong weights.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never set: it would switch off the
check for every file.
"""
import argparse
import contextlib
import contextvars
import io
import os.path as osp
import pickle
import types
from typing import Any, Dict, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import CheckpointFamilyError, CheckpointReadError, InputError

_TRUSTED = contextvars.ContextVar('mmdeform_trusted_checkpoint', default=False)


@contextlib.contextmanager
def trusted_checkpoints():
    """Within this context, checkpoints are unpickled in full (own training state)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


class OpaqueObject:
    """Stands in for an object of a type the restricted unpickler does not rebuild.

    It accepts whatever pickle hands it and keeps it in ``args``/``state``;
    it never runs code of the type it replaces.
    """
    qualname = 'unknown'

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __new__(cls, *args, **kwargs):
        # pickle builds dict/list subclasses (yacs' CfgNode in the official DAT
        # files) with __new__ alone, then calls __setitem__ / append
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.items.append((key, value))

    def append(self, value) -> None:
        self.items.append(value)

    def extend(self, values) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f'<opaque {self.qualname}>'


def _numpy_globals() -> Dict[str, Any]:
    import numpy as np
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed = {'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype}
    for core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[f'{core}._reconstruct'] = multiarray._reconstruct
        allowed[f'{core}.scalar'] = multiarray.scalar
    for name in dir(np.dtypes):
        if name.endswith('DType'):
            allowed[f'numpy.dtypes.{name}'] = getattr(np.dtypes, name)
    return allowed


def _torch_globals() -> Dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals
    return dict(_get_allowed_globals())


_ALLOWED: Dict[str, Any] = {}


def allowed_globals() -> Dict[str, Any]:
    """``module.name`` -> object: what an untrusted file may construct."""
    if not _ALLOWED:
        _ALLOWED.update(_torch_globals())
        _ALLOWED.update(_numpy_globals())
        _ALLOWED['argparse.Namespace'] = argparse.Namespace
        _ALLOWED['_codecs.encode'] = __import__('codecs').encode
        _ALLOWED['builtins.set'] = set
        _ALLOWED['builtins.frozenset'] = frozenset
        _ALLOWED['builtins.slice'] = slice
        _ALLOWED['builtins.complex'] = complex
    return _ALLOWED


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only :func:`allowed_globals`; other names become :class:`OpaqueObject`."""
    _opaque_types: Dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f'{module}.{name}'
        if module == '__builtin__':  # protocol-2 files written by Python 2
            full = f'builtins.{name}'
        allowed = allowed_globals().get(full)
        if allowed is not None:
            return allowed
        if full not in self._opaque_types:
            self._opaque_types[full] = type(f'Opaque[{full}]', (OpaqueObject,), {'qualname': full})
        return self._opaque_types[full]


# torch.load accepts a pickle "module"; it subclasses its Unpickler.
restricted_pickle = types.SimpleNamespace(
    __name__='mmdeform_restricted_pickle',
    Unpickler=RestrictedUnpickler,
    load=lambda f, **kw: RestrictedUnpickler(f, **kw).load(),
    loads=lambda b, **kw: RestrictedUnpickler(io.BytesIO(b), **kw).load(),
)


def _what_is_wrong(filename: str, error: Exception) -> str:
    """Why ``torch.load`` failed, in terms of the file: empty, truncated, not a checkpoint."""
    size = osp.getsize(filename)
    with open(filename, 'rb') as f:
        head = f.read(8)
    if size == 0:
        return 'the file is empty (0 bytes)'
    if head.startswith(b'PK\x03\x04'):  # torch's zip format
        if 'central directory' in str(error):
            return (f'the zip archive ends early ({size} bytes, no central directory): '
                    'the file is truncated, e.g. an interrupted save or download')
        return f'the zip archive is corrupt ({size} bytes): {str(error).splitlines()[0]}'
    if head[:1] == b'\x80':  # a pickle: torch's legacy format or a bare pickle
        return (f'the pickle stream is truncated or corrupt ({size} bytes): '
                f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}')
    return (f'not a PyTorch checkpoint: it starts with {head!r} ({size} bytes), neither a zip '
            'archive (torch.save) nor a pickle')


def load_checkpoint_file(filename: str, map_location=None, trusted: bool = None) -> Any:
    """Load a local checkpoint file at the given (or the current) trust level.

    Raises:
        CheckpointReadError: the file is empty, truncated or not a checkpoint;
            the message names the file and what is wrong with it.
    """
    if trusted is None:
        trusted = _TRUSTED.get()
    kwargs = {} if trusted else dict(pickle_module=restricted_pickle)
    try:
        return torch.load(filename, map_location=map_location, weights_only=False, **kwargs)
    except OSError:  # missing file, no permission: the message names the file already
        raise
    except Exception as e:  # pickle, zip and storage errors of a broken file
        raise CheckpointReadError(f'cannot read checkpoint {filename}: '
                                  f'{_what_is_wrong(filename, e)}') from None


def _load_from_local(filename: str, map_location=None) -> Any:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename!r} does not exist')
    return load_checkpoint_file(filename, map_location)


def _load_from_http(url: str, map_location=None) -> Any:
    from .download import download_checkpoint
    return load_checkpoint_file(download_checkpoint(url), map_location)


def register_checkpoint_loaders() -> None:
    """Route mmengine's loading of local files and http(s) URLs (``load_from``,
    ``resume``, ``init_cfg`` checkpoints, ``tools/test.py CKPT``) through
    :func:`load_checkpoint_file`; URLs are downloaded once, hash-checked, cached."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_from_local)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     force=True)(_load_from_http)


class CheckpointMismatchError(InputError, RuntimeError):
    pass


def _strip_module(keys):
    return {k[len('module.'):] if k.startswith('module.') else k for k in keys}


def checkpoint_family(keys) -> Optional[str]:
    """The detector family (and format) a set of state-dict keys looks like, or None.

    Recognises mmdeform's DETR, Deformable DETR (two-stage) and DINO, the same
    models in mmdet 3.x's layout, and the official DETR / Deformable-DETR / RT-DETR files.
    """
    keys = _strip_module(keys)
    if 'decoder.enc_score_head.weight' in keys and 'decoder.dec_score_head.0.weight' in keys:
        return 'RT-DETR (official lyuwenyu/RT-DETR format)'
    if 'class_embed.weight' in keys and any(k.startswith('transformer.') for k in keys):
        return 'DETR (official facebookresearch/detr format)'
    if 'class_embed.0.weight' in keys and any(k.startswith('transformer.') for k in keys):
        return 'Deformable DETR (official fundamentalvision format)'
    if 'bbox_head.fc_cls.weight' in keys:
        return 'DETR (mmdet 3.x format)'
    if 'bbox_head.cls_branch.weight' in keys:
        return 'DETR'
    if 'bbox_head.cls_branches.0.weight' in keys:
        mmdet_layout = 'bbox_head.reg_branches.0.0.weight' in keys
        if any(k.startswith('dn_query_generator.') for k in keys):
            name = 'DINO'
        elif 'memory_trans_fc.weight' in keys:
            name = 'Deformable DETR (two-stage)'
        else:
            name = 'Deformable DETR'
        return f'{name} (mmdet 3.x format)' if mmdet_layout else name
    return None


_CONVERTERS = {
    'official facebookresearch/detr format': 'tools/model_converters/official_detr.py',
    'official fundamentalvision format': 'tools/model_converters/official_deformable_detr.py',
    'mmdet 3.x format': 'tools/model_converters/mmdet_to_mmdeform.py',
    'official lyuwenyu/RT-DETR format': 'tools/model_converters/official_rtdetr.py',
}


def check_family(filename: str, model: torch.nn.Module, state_keys) -> None:
    """Raise :class:`CheckpointFamilyError` (one line) when the checkpoint's keys look
    like another family or format than the model's."""
    theirs = checkpoint_family(state_keys)
    ours = checkpoint_family(model.state_dict().keys())
    if theirs is None or ours is None or theirs == ours:
        return
    fix = next((f'convert it first with {tool}' for fmt, tool in _CONVERTERS.items()
                if fmt in theirs), f'use a {theirs.split(" (")[0]} config')
    raise CheckpointFamilyError(
        f'checkpoint {filename} looks like {theirs} weights, but the config builds '
        f'{ours} ({type(model).__name__}); {fix}')


def checkpoint_mismatch(model: torch.nn.Module, checkpoint: dict,
                        revise_keys=((r'^module\.', ''), )) -> Dict[str, list]:
    """Keys the model lacks, keys the checkpoint lacks, and shapes that differ."""
    import re
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    for pattern, repl in revise_keys:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    own = model.state_dict()
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) != tuple(v.shape)]
    return dict(missing=[k for k in own if k not in state],
                unexpected=[k for k in state if k not in own],
                shape=shapes)


def describe_mismatch(filename: str, mismatch: Dict[str, list], checkpoint: dict) -> str:
    lines = [f'checkpoint {filename} does not fit the model of this config:']
    for name, label in (('missing', 'missing from the checkpoint'),
                        ('unexpected', 'in the checkpoint but not in the model')):
        keys = mismatch[name]
        if keys:
            lines.append(f'  {len(keys)} keys {label}: ' + ', '.join(keys[:8]) +
                         (' ...' if len(keys) > 8 else ''))
    for key, theirs, ours in mismatch['shape'][:16]:
        lines.append(f'  shape of {key}: checkpoint {theirs}, model {ours}')
    if len(mismatch['shape']) > 16:
        lines.append(f'  ... {len(mismatch["shape"]) - 16} more shape mismatches')
    if mismatch['missing'] or mismatch['shape']:
        # what a non-strict load (load_from) does with them, e.g. a new class count
        lines.append('  The missing tensors and those of another shape are not loaded: they '
                     'keep the model\'s initialisation.')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    hint = None
    if isinstance(meta, dict):
        import re
        hint = meta.get('config') or meta.get('source_format')
        if not hint and isinstance(meta.get('experiment_name'), str):
            hint = re.sub(r'_\d{8}_\d{6}$', '', meta['experiment_name']) + '.py'
    if hint:
        lines.append(f'  The file says it was made for: {hint}')
    return '\n'.join(lines)


def opaque_objects(obj: Any, path: str = '') -> Dict[str, str]:
    """Where the restricted unpickler left :class:`OpaqueObject` s: path -> type name."""
    found: Dict[str, str] = {}
    if isinstance(obj, OpaqueObject):
        found[path or '.'] = obj.qualname
    elif isinstance(obj, dict):
        for key, value in obj.items():
            found.update(opaque_objects(value, f'{path}.{key}' if path else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found.update(opaque_objects(value, f'{path}[{i}]'))
    return found


__all__ = ['trusted_checkpoints', 'load_checkpoint_file', 'register_checkpoint_loaders',
           'OpaqueObject', 'RestrictedUnpickler', 'opaque_objects', 'checkpoint_mismatch',
           'describe_mismatch', 'CheckpointMismatchError', 'checkpoint_family', 'check_family',
           'CheckpointReadError', 'CheckpointFamilyError']
