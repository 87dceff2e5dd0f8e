"""Prepare a checkpoint for release: keep the weights and metadata, add the sha256 to the name.

    python tools/model_converters/publish_model.py IN.pth OUT.pth
    # -> OUT-<first 8 hex digits of its sha256>.pth

Drops the optimizer, schedulers, message hub and generator states that training
checkpoints carry, so the file is smaller and loads without trusting pickled
objects; the hash suffix lets ``load_from = 'https://...'`` verify the download.
"""
import argparse
import hashlib
import os
import os.path as osp

from mmdeform.converters import read_state_dict, save_checkpoint_atomic
from mmdeform.utils.checkpoint import OpaqueObject


def _plain(value):
    """Metadata without the stand-ins of objects the restricted loader did not rebuild."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, OpaqueObject)}
    return value


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def publish(src: str, dst: str) -> str:
    state_dict, checkpoint = read_state_dict(src)
    meta = _plain(checkpoint.get('meta', {})) if isinstance(checkpoint.get('meta'), dict) else {}
    dropped = sorted(k for k in checkpoint if k not in ('state_dict', 'meta', 'model'))
    stem = dst[:-4] if dst.endswith('.pth') else dst
    tmp = stem + '.unhashed.pth'
    save_checkpoint_atomic(dict(state_dict=state_dict, meta=meta), tmp)
    final = f'{stem}-{sha256_of(tmp)[:8]}.pth'
    os.replace(tmp, final)
    print(f'{src} -> {final}  ({len(state_dict)} tensors; dropped: {", ".join(dropped) or "nothing"}; '
          f'{osp.getsize(final) / 2**20:.1f} MiB)')
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('in_file', help='training checkpoint')
    parser.add_argument('out_file', help='output name; the hash is appended before .pth')
    args = parser.parse_args(argv)
    return publish(args.in_file, args.out_file)


if __name__ == '__main__':
    from mmdeform.utils.errors import run_tool_main
    run_tool_main(main)
