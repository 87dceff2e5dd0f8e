"""Download a model-zoo checkpoint by name and convert it for mmdeform.

    python tools/misc/download_checkpoint.py NAME [--out-dir checkpoints]
    python tools/misc/download_checkpoint.py --list
    python tools/misc/download_checkpoint.py NAME --src FILE   # a file you fetched by hand

NAME is a ``Name`` of configs/metafile.yml. The source file is downloaded once
into the checkpoint cache (``$MMDEFORM_CHECKPOINTS``, else torch hub's), its
sha256 prefix is verified when the file name carries one, and the converter
the index names writes ``OUT_DIR/NAME.pth``, ready for the index's config.
Some authors publish a Google Drive folder, not per-file links (official DINO):
the index then names the ``File`` in the folder, which you download by hand
and pass with ``--src``.
"""
import argparse
import os
import os.path as osp
import re
import sys

import yaml

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)


def load_index(path):
    with open(path) as f:
        return {m['Name']: m for m in yaml.safe_load(f)['Models']}


def direct_url(url: str) -> str:
    """Google Drive 'view' links -> their direct-download form."""
    match = re.match(r'https://drive\.google\.com/file/d/([\w-]+)', url)
    if match:
        return ('https://drive.usercontent.google.com/download?export=download&confirm=t&id='
                + match.group(1))
    return url


def main(argv=None):
    from mmdeform.converters import (convert_mmdet, convert_official_dat,
                                     convert_official_deformable_detr, convert_official_detr,
                                     convert_official_dino, convert_official_rtdetr,
                                     run_converter)
    from mmdeform.utils.download import download_checkpoint
    converters = {
        'tools/model_converters/official_detr.py': convert_official_detr,
        'tools/model_converters/official_deformable_detr.py': convert_official_deformable_detr,
        'tools/model_converters/mmdet_to_mmdeform.py': convert_mmdet,
        'tools/model_converters/official_dino.py': convert_official_dino,
        'tools/model_converters/official_dat.py': convert_official_dat,
        'tools/model_converters/official_rtdetr.py': convert_official_rtdetr,
    }
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('name', nargs='?', help='model name in the index')
    parser.add_argument('--index', default=osp.join(ROOT, 'configs', 'metafile.yml'))
    parser.add_argument('--out-dir', default='checkpoints')
    parser.add_argument('--list', action='store_true', help='list the models and exit')
    parser.add_argument('--src', help='convert this local file instead of downloading')
    args = parser.parse_args(argv)
    index = load_index(args.index)
    if args.list or not args.name:
        for name, model in index.items():
            metric, value = next(iter(model['Results'][0]['Metrics'].items()))
            unit = 'AP' if metric == 'box AP' else 'top-1'
            print(f'{name:45s} {value:5.1f} {unit:5s} {model["Config"]}')
        return None
    if args.name not in index:
        raise SystemExit(f'{args.name!r} is not in {args.index}; known: {", ".join(index)}')
    model = index[args.name]
    if args.src:
        source = args.src
    elif '/drive/folders/' in model['Weights']:
        raise SystemExit(
            f'{args.name} is the file {model["Metadata"].get("File")!r} of the Google Drive folder '
            f'{model["Weights"]}, which has no per-file link: download that file by hand and '
            f'run: python tools/misc/download_checkpoint.py {args.name} --src FILE')
    else:
        source = download_checkpoint(direct_url(model['Weights']))
    convert = converters.get(model['Metadata']['Converter'])
    if convert is None:
        raise SystemExit(f'{args.index}: unknown converter {model["Metadata"]["Converter"]!r}')
    dst = osp.join(args.out_dir, f'{args.name}.pth')
    os.makedirs(args.out_dir, exist_ok=True)
    run_converter(convert, source, dst)
    if (model.get('Results') or [{}])[0].get('Task') == 'Image Classification':
        print(f'A backbone checkpoint: set model.backbone.init_cfg=dict(type=\'Pretrained\', '
              f'checkpoint=\'{dst}\') (as {model["Config"]} does with the URL)')
    else:
        print(f'Evaluate with: python tools/test.py {model["Config"]} {dst}')
    return dst


if __name__ == '__main__':
    main()
