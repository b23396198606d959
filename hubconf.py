"""torch.hub entry points: ``torch.hub.load(REPO, "eeea_c2", source="local", pretrained=FOLDER)``.

One entry per registered network (``eeea_c2``, ``ofa595``, ``chexnet``, ``visformer_small``, ``autoformerv2_base``),
taken from the model registry so that a model added there is here too. ``pretrained`` is a model folder written by
``predict.py --export-hub DIR`` (or any checkpoint file ``--pretrained`` reads); without it the network has random
weights. Nothing is downloaded: the ImageNet weights are only fetched when ``pretrained="imagenet"`` is asked for.
The model is returned in eval mode; its folder's thresholds and out-of-distribution statistics are in
``model.dtforcxr8`` (the ``dtforcxr8`` section of ``config.json``), or None without a folder.
"""
from common.models.registry import list_models as _list_models
from common.models.registry import model_info as _model_info

dependencies = ["torch", "timm"]


def _entry(name: str):
    def build(pretrained=None, num_classes: int = 14, img_size: int | None = None):
        import json
        from pathlib import Path

        from common.models import create_model
        from common.models.model_folder import CONFIG_NAME, SECTION, is_model_folder

        section = None
        if pretrained is not None and is_model_folder(pretrained):
            section = json.loads((Path(pretrained) / CONFIG_NAME).read_text())[SECTION]
            img_size = img_size or int(section["img_size"])  # Visformer and AutoFormerV2 are built for one size
        model = create_model(name, num_classes=num_classes, pretrained=None if pretrained is None else str(pretrained),
                             img_size=img_size)
        model.dtforcxr8 = section
        return model.eval()

    info = _model_info(name)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{info.display_name} (folder {info.folder_name}), {info.native_size}-px native input, 14 "
                     "ChestX-ray14 logits. pretrained: a model folder (predict.py --export-hub) or checkpoint file; "
                     "num_classes: head size; img_size: input size (default: the folder's, else the native one).")
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
del _name
