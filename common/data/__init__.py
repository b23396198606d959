"""Everything between the files on disk and a batch of tensors: NIH metadata and label files (``labels``), patient-wise
splits and the leakage check (``splits``), torch-free image reading and the image index (``images``), file
fingerprints (``fingerprint``), transforms, datasets, the uint8 image cache (``image_cache`` to read,
``cache_build`` to build), augmentation on the device, a split's loaders (``split_data``) and the synthetic
CXR8-format generator (``synthetic``).
"""
