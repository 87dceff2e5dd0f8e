# ++ two-stage Deformable DETR (46.9 box AP): the 300 queries start from the
# top-scoring encoder proposals; the proposal branch is trained class-agnostically.
#   tools/dist_train.sh configs/deformable_detr_refine_two_stage.py 8
_base_ = './deformable_detr_refine.py'
model = dict(as_two_stage=True)
