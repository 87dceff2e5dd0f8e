# + iterative bounding box refinement (46.2 box AP): one class and box branch per
# decoder layer; each layer's boxes are the next layer's (detached) references.
_base_ = './deformable_detr.py'
model = dict(with_box_refine=True)
