"""Fixed facts of the ChestX-ray14 task and of the repository layout."""

# CheXNet's class order (arnoweng/CheXNet, and the original DTforCXR8). "No Finding" means all 14 are 0.
CLASS_NAMES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NUM_CLASSES = len(CLASS_NAMES)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Numbered folder -> (folder name, registry model name). Folder K writes modelK.pth.
MODEL_FOLDERS = {
    1: ("1-EEEA-Net-C2", "eeea_c2"),
    2: ("2-OFA-595", "ofa595"),
    3: ("3-CheXNet", "chexnet"),
    4: ("4-Visformer-small", "visformer_small"),
    5: ("5-AutoFormerV2-base", "autoformerv2_base"),
}
DISTILL_FOLDER = "6-Distilling-to-EEEA-Net-C2"
STUDENT_MODEL = "eeea_c2"
