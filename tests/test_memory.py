"""The training-memory estimate counts exactly the tensors autograd keeps for the backward pass."""
import torch

from common.models.memory import OPTIMISER_BYTES_PER_PARAMETER, TrainingMemory, saved_tensor_bytes, training_memory


def test_saved_tensors_are_counted_once_and_without_the_parameters():
    torch.manual_seed(0)
    # Linear saves its input (its weight is a parameter: not counted); ReLU saves its output; the in-place ReLU
    # shares that storage with the second Linear's input, which is counted once.
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(inplace=True), torch.nn.Linear(20, 5))
    images = torch.randn(3, 10)
    assert saved_tensor_bytes(model, images) == 3 * (10 + 20) * 4
    # Under bf16 autocast: the bf16 copy of the input (the first Linear needs it for its weight gradient), the bf16
    # ReLU output (shared with the second Linear), and the bf16 copy of the second weight, which that layer needs for
    # the gradient of its input (the first layer's input needs no gradient, so its weight copy is not kept).
    assert saved_tensor_bytes(model, images, torch.bfloat16) == 2 * (3 * 10 + 3 * 20 + 5 * 20)


def test_the_estimate_grows_by_the_per_image_part():
    memory = TrainingMemory("m", 64, "fp32", parameters=1000, optimiser_bytes=1000 * OPTIMISER_BYTES_PER_PARAMETER,
                            fixed_activation_bytes=100, per_image_bytes=50)
    assert memory.total_bytes(4) == 16_000 + 100 + 200
    assert memory.largest_batch(16_000 + 100 + 1000, headroom=1.0) == 20
    assert memory.largest_batch(1000, headroom=1.0) == 0


def test_a_registered_model_is_estimated_with_its_parameter_count():
    memory = training_memory("eeea_c2", img_size=32)
    assert memory.parameters == 4_732_838  # the 14-class count of docs/architectures.md §15
    assert memory.optimiser_bytes == 16 * 4_732_838 and memory.per_image_bytes > 0
    # Activations scale with the pixels: a 64-px image keeps about 4 times what a 32-px one does.
    ratio = training_memory("eeea_c2", img_size=64).per_image_bytes / memory.per_image_bytes
    assert 3.5 < ratio < 4.5
