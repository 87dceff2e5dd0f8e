"""COCO category ids: the official DETR models have one class row per id (0-90)."""
# The 80 COCO 2017 detection category ids, in the order of mmdet's CocoDataset
# classes (person=1, bicycle=2, ..., toothbrush=90; ids 12, 26, 29, 30, 45, 66, 68,
# 69, 71 and 83 are unused, and 0 is no category).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)
NUM_OFFICIAL_CLASSES = 91  # max id + 1
