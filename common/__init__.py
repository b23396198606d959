"""DTforCXR8: chest X-ray (NIH ChestX-ray14) classifiers and their distillation into EEEA-Net-C2.

The numbered folders of the repository are thin entry points over this package. The package, bottom to top:

- :mod:`common.constants`, :mod:`common.errors`  class names; one-line errors (``UserError``, ``run_main``)
- :mod:`common.data`        CXR8 metadata, splits, leakage check, image index, datasets and transforms
- :mod:`common.models`      the model registry (``create_model``, ``register_model``, ``model_folders``) and
                            published-checkpoint loading (``load_pretrained``)
- :mod:`common.metrics`     AUROC / F1 / accuracy / sensitivity / specificity and the patient-level bootstrap
- :mod:`common.losses`      the hard-label loss and the multi-label knowledge-distillation loss
- :mod:`common.checkpoint`  atomic checkpoint writing, resume state, ``load_model_from_checkpoint``
- :mod:`common.image_cache` the uint8 image cache built once (``python -m common.image_cache``) and its batch reader;
  :mod:`common.device_augment` the train/eval views of uint8 batches on the device; :mod:`common.threads` threads
  and loader workers sharing the cores; :mod:`common.distributed` torchrun processes (DDP, gathered evaluation)
- :mod:`common.engine`      the one training engine (``fit``, ``train_one_epoch``) and ``predict_logits``
- :mod:`common.split_data`, :mod:`common.arguments`, :mod:`common.layout`, :mod:`common.run_setup`,
  :mod:`common.scoring`     what the commands share: a split's loaders, flag groups, where folders keep their
                            models, the setup of a training run, scoring a checkpoint
- :mod:`common.explain`, :mod:`common.localization`, :mod:`common.heatmaps`  Grad-CAM maps and figures, Wang et
                            al.'s localisation protocol on NIH-format boxes, and both applied to a scored checkpoint
- :mod:`common.subgroups`, :mod:`common.external`  AUROC by sex / age / view and calibration; scoring a CSV of
                            another model's predictions
- :mod:`common.images`, :mod:`common.onnx_export`  torch-free image conversion, ONNX export and the onnxruntime
                            predictor
- the commands, side by side (none imports another): :mod:`common.training` (folders 1-5 ``train-model.py``),
  :mod:`common.evaluation` (``test-model.py``), :mod:`common.distill` (folder 6 ``train-model.py``),
  :mod:`common.compare` (folder 6 ``test-model.py``), :mod:`common.predict` (``predict.py`` of folders 1-6),
  :mod:`common.profile` (``para-test-*.py``) and :mod:`common.demo` (``python -m common.demo``)

Each command is ``main(argv, *, model=..., index=..., folder=...)`` (folder 6: ``main(argv, *, folder=...)``) and
is run by a script through :func:`common.errors.run_main`.
"""

__version__ = "0.1.0"
