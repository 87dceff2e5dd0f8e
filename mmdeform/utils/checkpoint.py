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
from typing import Any, Dict

import torch
from mmengine.runner.checkpoint import CheckpointLoader

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


def load_checkpoint_file(filename: str, map_location=None, trusted: bool = None) -> Any:
    """Load a local checkpoint file at the given (or the current) trust level."""
    if trusted is None:
        trusted = _TRUSTED.get()
    if trusted:
        return torch.load(filename, map_location=map_location, weights_only=False)
    return torch.load(filename, map_location=map_location, weights_only=False,
                      pickle_module=restricted_pickle)


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


class CheckpointMismatchError(RuntimeError):
    pass


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
           'describe_mismatch', 'CheckpointMismatchError']
