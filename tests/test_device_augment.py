"""Augmentation of uint8 batches on the device (run here on CPU tensors): torchvision's crop distribution, flips per
image, reproducibility from the caller's generator, agreement with resized_crop and with the PNG eval view."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms
from torchvision.transforms import functional as TF

from common.data.cache_build import stored_image
from common.data.device_augment import DeviceAugment, center_crop_offsets, random_resized_crop_boxes
from common.data.images import load_png
from common.data.transforms import build_transform

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DRAWS = 3000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stored():
    """The 10 real PNGs as the 256-px cache stores them, uint8 [10, 256, 256]."""
    return torch.from_numpy(np.stack([stored_image(load_png(p), 256) for p in sorted(REAL.glob("*.png"))]))


def as_grey_levels(augment_output: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation of channel 0: the crop in grey levels 0..255."""
    return (augment_output[:, 0] * STD[0] + MEAN[0]) * 255


def torchvision_boxes(count, height, width, scale, ratio, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        image = torch.empty(1, height, width)
        return torch.tensor([transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio))
                             for _ in range(count)])


@pytest.mark.parametrize("height, width, scale", [(256, 256, (0.08, 1.0)), (120, 300, (0.3, 1.0))])
def test_crops_follow_torchvisions_random_resized_crop_distribution(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    ours = random_resized_crop_boxes(DRAWS, height, width, scale, ratio, torch.Generator().manual_seed(1))
    reference = torchvision_boxes(DRAWS, height, width, scale, ratio, seed=2)
    for boxes in (ours, reference):
        top, left, box_h, box_w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (box_h >= 1).all() and (box_w >= 1).all()
        assert (top + box_h <= height).all() and (left + box_w <= width).all()

    def features(boxes):
        top, left, box_h, box_w = boxes.double().T
        centre_y = (top + box_h / 2) / height
        return {"area share": box_h * box_w / (height * width), "log aspect ratio": torch.log(box_w / box_h),
                "centre y": centre_y}

    mine, theirs = features(ours), features(reference)
    for name in mine:
        result = ks_2samp(mine[name].numpy(), theirs[name].numpy())
        assert result.pvalue > 0.01, f"{name}: KS p = {result.pvalue:.4f}"


def test_fallback_is_torchvisions_centre_crop():
    # Scale above what fits a 40 x 400 image: no try can fit, so every box is the fallback.
    boxes = random_resized_crop_boxes(8, 40, 400, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    reference = torchvision_boxes(1, 40, 400, (0.9, 1.0), (3 / 4, 4 / 3), seed=0)[0]
    assert (boxes == reference).all()
    assert reference.tolist() == [0, (400 - 53) // 2, 40, 53]


def test_flips_are_per_image():
    # A horizontal ramp: the flipped crop of the whole image is the ramp reversed.
    ramp = torch.arange(64, dtype=torch.uint8).repeat(64, 64, 1)  # [64 images, 64 rows, 64 columns]
    augment = DeviceAugment(64, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = augment(ramp, torch.Generator().manual_seed(3))
    _, flips = augment.draw(64, 64, 64, torch.Generator().manual_seed(3))
    assert 0 < int(flips.sum()) < 64  # both kinds in one batch
    grey = as_grey_levels(out)
    descending = grey[:, :, 0] > grey[:, :, -1]
    assert torch.equal(descending.all(dim=1), flips)
    assert torch.equal((~descending).all(dim=1), ~flips)


def test_generator_makes_results_reproducible_and_leaves_the_global_rng_alone(stored):
    augment = DeviceAugment(224, MEAN, STD)
    state = torch.get_rng_state()
    first = augment(stored, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # the global RNG does not matter
    second = augment(stored, torch.Generator().manual_seed(11))
    assert torch.equal(first, second)
    assert not torch.equal(first, augment(stored, torch.Generator().manual_seed(12)))
    assert first.shape == (10, 3, 224, 224) and first.dtype == torch.float32
    with pytest.raises(ValueError, match="Generator"):
        augment(stored)


def test_output_is_the_png_paths_tensor_format(stored):
    augment = DeviceAugment(224, MEAN, STD)
    boxes = torch.tensor([[0, 0, 256, 256]] * 10)
    out = augment.apply(stored.unsqueeze(1), boxes, torch.zeros(10, dtype=torch.bool))  # [B, 1, S, S] accepted
    # Channels are the grey image normalised with each channel's mean and std, as GrayToTensor + Normalize give.
    grey = out[:, 0] * STD[0] + MEAN[0]
    for channel in (1, 2):
        torch.testing.assert_close(out[:, channel] * STD[channel] + MEAN[channel], grey, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="grey batch"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator())


def test_crop_agrees_with_resized_crop_on_the_same_box(stored):
    """Against torchvision's bilinear resized_crop of the float image (no antialiasing) inside the crop border, and
    against PIL's antialiased resized_crop (the PNG path's operation) in the mean."""
    augment = DeviceAugment(224, MEAN, STD)
    generator = torch.Generator().manual_seed(5)
    images = stored.repeat(4, 1, 1)
    boxes = random_resized_crop_boxes(len(images), 256, 256, (0.08, 1.0), (3 / 4, 4 / 3), generator)
    grey = as_grey_levels(augment.apply(images, boxes, torch.zeros(len(images), dtype=torch.bool)))
    pil_means = []
    for k, (top, left, height, width) in enumerate(boxes.tolist()):
        plain = TF.resized_crop(images[k][None].float(), top, left, height, width, [224, 224], antialias=False)[0]
        # roi_align also interpolates with the pixels just outside the box: compare inside that border.
        border = int(np.ceil(224 / min(height, width))) + 1
        inner = (grey[k] - plain)[border:-border, border:-border]
        assert inner.abs().max() < 0.01, (top, left, height, width)
        pil = TF.resized_crop(Image.fromarray(images[k].numpy()), top, left, height, width, [224, 224])
        difference = (grey[k] - torch.from_numpy(np.array(pil)).float()).abs()
        pil_means.append(float(difference.mean()))
        assert float(torch.quantile(difference.flatten(), 0.99)) < 4.0
    # About 0.3 grey levels on average, most of it PIL's rounding to uint8 (see common.data.device_augment).
    assert np.mean(pil_means) < 0.5 and max(pil_means) < 1.0


def test_eval_view_equals_png_eval_view_for_a_cache_of_the_eval_resize(stored):
    augment = DeviceAugment(224, MEAN, STD, train=False)
    view = augment(stored)
    png = torch.stack([build_transform(224, MEAN, STD, train=False)(load_png(p)) for p in sorted(REAL.glob("*.png"))])
    assert float(((view - png).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255).max()) <= 1.0
    assert center_crop_offsets(256, 256, 224) == (16, 16)


def test_eval_view_from_a_larger_cache_is_close_to_the_png_view():
    """A 512-px cache used by a 224-px model: the stored image is resized to 256 first (not bit-identical)."""
    paths = sorted(REAL.glob("*.png"))[:3]
    larger = torch.from_numpy(np.stack([stored_image(load_png(p), 512) for p in paths]))
    view = DeviceAugment(224, MEAN, STD, train=False)(larger)
    png = torch.stack([build_transform(224, MEAN, STD, train=False)(load_png(p)) for p in paths])
    difference = (view - png).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert float(difference.mean()) < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result(stored):
    augment = DeviceAugment(224, MEAN, STD)
    on_cpu = augment(stored, torch.Generator().manual_seed(4))
    on_gpu = augment(stored.cuda(), torch.Generator().manual_seed(4))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-3, rtol=0)
    eval_augment = DeviceAugment(224, MEAN, STD, train=False)
    torch.testing.assert_close(eval_augment(stored.cuda()).cpu(), eval_augment(stored), atol=1e-5, rtol=0)
