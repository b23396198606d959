"""DTforCXR8: chest X-ray (NIH ChestX-ray14) classifiers and their distillation into EEEA-Net-C2.

The numbered folders of the repository are thin entry points over this package:

- :mod:`common.data`       CXR8 metadata, splits, image index, datasets and transforms
- :mod:`common.models`     the model registry (``create_model``) and published-checkpoint loading
- :mod:`common.metrics`    AUROC / F1 / accuracy / sensitivity / specificity and the patient-level bootstrap
- :mod:`common.losses`     the hard-label loss and the multi-label knowledge-distillation loss
- :mod:`common.engine`     the one training / evaluation engine used by every folder
- :mod:`common.checkpoint` atomic checkpoint writing and resume state
- :mod:`common.cli`        ``get_args_parser`` / ``main(argv)`` for every script
"""

__version__ = "0.1.0"
