"""Fixed facts of the ChestX-ray14 task and of the repository layout."""

# CheXNet's class order (arnoweng/CheXNet, and the original DTforCXR8). "No Finding" means all 14 are 0.
CLASS_NAMES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NUM_CLASSES = len(CLASS_NAMES)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The numbered model folders come from the model registry (common.models.model_folders).
DISTILL_FOLDER = "6-Distilling-to-EEEA-Net-C2"
STUDENT_MODEL = "eeea_c2"
