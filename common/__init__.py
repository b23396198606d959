"""DTforCXR8: chest X-ray (NIH ChestX-ray14) classifiers and their distillation into EEEA-Net-C2.

The numbered folders of the repository are thin entry points over this package. Its floors, bottom to top (a
folder imports only the folders before it; ``tests/test_layout.py`` keeps it so):

- ``constants``, ``errors``, ``atomic``  class names; ``UserError`` and file-system errors; atomic file writes
- ``runtime/``     device policy, torchrun processes, threads and loader workers, progress bars
- ``data/``        NIH metadata, splits and the leakage check, images, transforms, datasets, the image cache
- ``inference/``   a user's own images to probabilities (PNG, JPEG, DICOM), the ONNX export; torch-free at import
- ``models/``      the model registry (``create_model``), published-checkpoint loading, parameter and MAC counts
- ``runs/``        checkpoints, run identity and the patients a checkpoint saw, the output folder and its lock
- ``evaluation/``  logits, metrics and the patient bootstrap, a checkpoint's report, subgroups, plots
- ``explain/``     Grad-CAM, Wang et al.'s localisation protocol, both applied to a scored checkpoint
- ``engine/``      the one training loop, the losses, the distillation criterion and its teachers
- ``commands/``    everything that reads flags: one module per command, run by a script through ``run_main``
"""

__version__ = "0.1.0"
