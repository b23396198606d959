"""Tests of common.engine.losses: the hard-label loss and the per-class Bernoulli KD loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.engine.losses import (
    MIN_TEACHER_WEIGHT,
    LabelLoss,
    MultiLabelKDLoss,
    auroc_teacher_weights,
    bernoulli_kd,
    tempered_teacher_probs,
)


def _logits(seed, *shape):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * 2.0


def _explicit_kl(student_logits, teacher_logits, temperature):
    """T² · mean of p log(p/q) + (1-p) log((1-p)/(1-q)), written out literally in float64."""
    q = torch.sigmoid(student_logits.double() / temperature)
    p = torch.sigmoid(teacher_logits.double() / temperature)
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    return temperature ** 2 * kl.mean()


def test_label_loss_matches_bce_with_pos_weight():
    logits, targets = _logits(0, 4, 14), (torch.rand(4, 14) < 0.3).float()
    pos_weight = torch.linspace(1.0, 3.0, 14)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, targets)
    assert torch.allclose(LabelLoss(pos_weight)(logits, targets), expected)
    assert torch.allclose(LabelLoss()(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_losses_are_float32_under_autocast():
    logits, teacher = _logits(1, 4, 14).bfloat16(), _logits(2, 4, 14).bfloat16()
    targets = (torch.rand(4, 14) < 0.3).float()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        hard = LabelLoss()(logits, targets)
        total = MultiLabelKDLoss()(logits, targets, teacher)
    assert hard.dtype == torch.float32
    assert total.dtype == torch.float32


def test_kd_value_and_gradient_zero_at_perfect_match():
    for temperature in (1.0, 2.0, 4.0):
        teacher = _logits(3, 8, 14)
        student = teacher.clone().requires_grad_(True)
        loss = bernoulli_kd(student, tempered_teacher_probs(teacher, temperature), temperature)
        loss.backward()
        assert 0.0 <= loss.item() < 1e-6
        assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-8)


def test_kd_hand_value_and_temperature_squared_scaling():
    # p = 3/4, student logit 0 -> q = 1/2 at every T.
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812; the term is T² times that.
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    student = torch.zeros(1, 1)
    teacher_probs = torch.full((1, 1), 0.75)
    for temperature in (1.0, 2.0, 3.0):
        value = bernoulli_kd(student, teacher_probs, temperature).item()
        assert value == pytest.approx(temperature ** 2 * kl, rel=1e-5)
    # The same through teacher logits: t = T ln 3 gives σ(t/T) = 3/4; T = 2 -> 4 · 0.130812 = 0.523248.
    teacher_logits = torch.full((1, 1), 2.0 * math.log(3.0))
    value = bernoulli_kd(student, tempered_teacher_probs(teacher_logits, 2.0), 2.0).item()
    assert value == pytest.approx(0.523248, rel=1e-5)


def test_kd_gradient_matches_explicit_formula():
    temperature = 2.0
    teacher = _logits(4, 6, 14)
    student = _logits(5, 6, 14).requires_grad_(True)
    loss = bernoulli_kd(student, tempered_teacher_probs(teacher, temperature), temperature)
    loss.backward()
    reference_student = student.detach().double().requires_grad_(True)
    reference = _explicit_kl(reference_student, teacher, temperature)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(student.grad.double(), reference_student.grad, atol=1e-7)
    # Closed form: T · (σ(s/T) − σ(t/T)) / (B·C).
    closed = temperature * (torch.sigmoid(student.detach() / temperature) - torch.sigmoid(teacher / temperature))
    assert torch.allclose(student.grad, closed / student.numel(), atol=1e-7)


def test_kd_classes_are_independent():
    temperature = 2.0
    teacher = _logits(6, 3, 14)
    student = _logits(7, 3, 14)

    def gradient(teacher_logits):
        s = student.clone().requires_grad_(True)
        bernoulli_kd(s, tempered_teacher_probs(teacher_logits, temperature), temperature).backward()
        return s.grad

    changed = teacher.clone()
    changed[:, 5] += 4.0
    before, after = gradient(teacher), gradient(changed)
    others = [c for c in range(14) if c != 5]
    assert torch.equal(before[:, others], after[:, others])
    assert not torch.allclose(before[:, 5], after[:, 5])


def test_no_softmax_across_labels():
    # Adding one constant to every logit leaves any softmax unchanged but must change a per-class sigmoid loss.
    temperature = 2.0
    teacher, student = _logits(8, 4, 14), _logits(9, 4, 14)
    base = bernoulli_kd(student, tempered_teacher_probs(teacher, temperature), temperature)
    shifted_student = bernoulli_kd(student + 3.0, tempered_teacher_probs(teacher, temperature), temperature)
    shifted_teacher = bernoulli_kd(student, tempered_teacher_probs(teacher + 3.0, temperature), temperature)
    assert abs(shifted_student.item() - base.item()) > 1e-3
    assert abs(shifted_teacher.item() - base.item()) > 1e-3
    # And a multi-label target with several ones is matched exactly (a softmax could not produce it).
    probs = torch.tensor([[0.99, 0.98, 0.97]])
    assert bernoulli_kd(torch.logit(probs.double()).float(), probs, 1.0).item() < 1e-6


def test_ensemble_probability_average_uniform_and_per_teacher():
    temperature = 2.0
    logits = _logits(10, 3, 5, 14)
    probs = torch.sigmoid(logits / temperature)
    assert torch.allclose(tempered_teacher_probs(logits, temperature), probs.mean(dim=0))
    # [K] weights are normalised: (1, 1, 2) -> (1/4, 1/4, 1/2).
    weighted = tempered_teacher_probs(logits, temperature, torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(weighted, 0.25 * probs[0] + 0.25 * probs[1] + 0.5 * probs[2])
    # Averaging probabilities, not logits.
    assert not torch.allclose(tempered_teacher_probs(logits, temperature),
                              torch.sigmoid(logits.mean(dim=0) / temperature))


def test_ensemble_per_class_weights():
    temperature = 1.0
    logits = _logits(11, 2, 4, 3)
    probs = torch.sigmoid(logits)
    # Class 0 only teacher 0, class 1 only teacher 1, class 2 weights 1:3 -> 1/4, 3/4.
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 3.0]])
    result = tempered_teacher_probs(logits, temperature, weights)
    assert torch.allclose(result[:, 0], probs[0, :, 0])
    assert torch.allclose(result[:, 1], probs[1, :, 1])
    assert torch.allclose(result[:, 2], 0.25 * probs[0, :, 2] + 0.75 * probs[1, :, 2])
    with pytest.raises(ValueError):
        tempered_teacher_probs(logits, temperature, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError):
        tempered_teacher_probs(logits, temperature, torch.tensor([[-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))


def test_averaged_target_gradient_equals_average_of_per_teacher_losses():
    # docs/distillation.md §5 option 2: for the BCE/KL loss, averaging per-teacher losses has the averaged-target gradient.
    temperature = 2.0
    teachers = _logits(12, 3, 4, 14)
    student = _logits(13, 4, 14).requires_grad_(True)
    bernoulli_kd(student, tempered_teacher_probs(teachers, temperature), temperature).backward()
    averaged = student.grad.clone()
    student.grad = None
    sum(bernoulli_kd(student, tempered_teacher_probs(t, temperature), temperature) for t in teachers).div(3).backward()
    assert torch.allclose(student.grad, averaged, atol=1e-7)


def test_alpha_one_equals_label_loss_and_needs_no_teacher():
    student, teacher = _logits(14, 4, 14), _logits(15, 4, 14)
    targets = (torch.rand(4, 14) < 0.3).float()
    loss = MultiLabelKDLoss(alpha=1.0, temperature=2.0)
    assert torch.equal(loss(student, targets, teacher), LabelLoss()(student, targets))
    assert torch.equal(loss(student, targets, None), LabelLoss()(student, targets))
    assert set(loss.last_terms) == {"hard"}
    with pytest.raises(ValueError):
        MultiLabelKDLoss(alpha=0.5)(student, targets, None)


def test_total_loss_combines_terms_and_logs_them():
    temperature, alpha = 2.0, 0.3
    student, targets = _logits(16, 4, 14), (torch.rand(4, 14) < 0.3).float()
    teachers = _logits(17, 2, 4, 14)
    loss_fn = MultiLabelKDLoss(alpha=alpha, temperature=temperature, teacher_weights=torch.tensor([1.0, 3.0]))
    total = loss_fn(student, targets, teachers)
    hard = LabelLoss()(student, targets)
    kd = bernoulli_kd(student, tempered_teacher_probs(teachers, temperature, torch.tensor([1.0, 3.0])), temperature)
    assert total.item() == pytest.approx(alpha * hard.item() + (1 - alpha) * kd.item(), rel=1e-6)
    assert loss_fn.last_terms["hard"] == pytest.approx(hard.item())
    assert loss_fn.last_terms["kd"] == pytest.approx(kd.item())
    assert isinstance(loss_fn.last_terms["kd"], float)


def test_invalid_alpha_and_temperature():
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError):
            MultiLabelKDLoss(alpha=alpha)
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            MultiLabelKDLoss(temperature=temperature)
        with pytest.raises(ValueError):
            bernoulli_kd(torch.zeros(1, 1), torch.zeros(1, 1), temperature)


def test_bernoulli_kd_rejects_logits_as_targets():
    with pytest.raises(ValueError, match="probabilities"):
        bernoulli_kd(torch.zeros(2, 3), torch.full((2, 3), 2.0), 2.0)


def test_auroc_teacher_weights():
    # Class 0: skills 0.4 and 0.2 -> 2/3, 1/3. Class 1: both missing -> uniform.
    # Class 2: below chance -> floor ε vs 0.1 -> ε/(ε+0.1), 0.1/(ε+0.1). Class 3: one missing -> 0 and 1.
    weights = auroc_teacher_weights([[0.9, None, 0.4, float("nan")], [0.7, None, 0.6, 0.8]])
    eps = MIN_TEACHER_WEIGHT
    expected = torch.tensor([[2 / 3, 0.5, eps / (eps + 0.1), 0.0], [1 / 3, 0.5, 0.1 / (eps + 0.1), 1.0]])
    assert weights.shape == (2, 4)
    assert torch.allclose(weights, expected)
    assert torch.allclose(weights.sum(dim=0), torch.ones(4))
    with pytest.raises(ValueError):
        auroc_teacher_weights([[0.9, 0.8], [0.7]])
