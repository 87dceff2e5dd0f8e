# DINO R50 4-scale as mmdet 3.3.0 builds it (dino-4scale_r50_8xb2-12e_coco.py, 49.0 box
# AP): one class and one box branch per decoder layer, a label embedding of num_classes
# rows and inverse_sigmoid clamped at 1e-5 in the head. mmdet's checkpoints load into it
# strictly after tools/model_converters/mmdet_to_mmdeform.py (the converter adds the zero
# input-projection biases that mmdet lacks) and give mmdet's outputs.
_base_ = './dino_4scale.py'
model = dict(
    dn_cfg=dict(num_label_embeddings=80),
    bbox_head=dict(share_pred_layer=False, reference_eps=1e-5))
