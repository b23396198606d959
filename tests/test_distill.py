"""Folder 6: cached == online teacher logits on the same view, and a tiny end-to-end distillation + comparison."""
import csv
import json

import pytest
import torch
from conftest import FAST_BOOT, LOADER, copy_runs, official_split_flags, trained_run_flags

from common.commands import compare, distill
from common.commands import evaluate as evaluation
from common.commands._cli import run_main
from common.constants import DISTILL_FOLDER
from common.data.split_data import SplitData
from common.data.transforms import build_transform
from common.engine.distill import CachedTeachers, DistillationCriterion, OnlineTeachers, Teacher, build_or_load_cache
from common.engine.losses import MultiLabelKDLoss
from common.models import model_folders



@pytest.fixture(scope="module")
def teachers(trained_model1, trained_model2, tmp_path_factory):
    """A copy of the session's model1 and model2 (the students and the comparison write beside them)."""
    return copy_runs(tmp_path_factory, trained_model1, trained_model2)


def teacher_split_data(synthetic, parts=("train",)) -> SplitData:
    """The split the teachers were trained on (the official-style split of the synthetic set)."""
    return SplitData(synthetic / "images", str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"), 0.1, 0,
                     parts=parts, workers=0)


def test_cached_and_online_give_the_same_loss_on_the_same_view(teachers, synthetic, tmp_path):
    teacher = Teacher(teachers / "2-OFA-595" / "model2.pth", 2)
    data = teacher_split_data(synthetic)
    cached = build_or_load_cache(teacher, data, tmp_path, 8, torch.device("cpu"), None)
    # The same deterministic view for the student batch and the cache: the eval transform at the teacher's size.
    view = build_transform(teacher.img_size, teacher.mean, teacher.std, train=False)
    loader = data.loader("train", view, 8, shuffle=False)
    batch = next(iter(loader))
    online = OnlineTeachers([teacher], teacher.mean, teacher.std, torch.device("cpu"))(batch)
    from_cache = CachedTeachers([cached], torch.device("cpu"))(batch)
    assert torch.allclose(online, from_cache, atol=2e-2, rtol=1e-2)  # the cache is fp16
    student_logits = torch.randn(batch["target"].shape)
    kd = MultiLabelKDLoss(alpha=0.5, temperature=2.0)
    loss_online = DistillationCriterion(kd, lambda b: online)(student_logits, batch)
    loss_cached = DistillationCriterion(kd, lambda b: from_cache)(student_logits, batch)
    assert abs(loss_online.item() - loss_cached.item()) < 1e-3
    # A second call reuses the file; a changed image list gives a different key and a rebuilt cache.
    again = build_or_load_cache(teacher, data, tmp_path, 8, torch.device("cpu"), None)
    assert torch.equal(again, cached)
    data.split.parts["train"].names = data.split.parts["train"].names[:-1]
    data.split.parts["train"].labels = data.split.parts["train"].labels[:-1]
    data.split.parts["train"].patient_ids = data.split.parts["train"].patient_ids[:-1]
    rebuilt = build_or_load_cache(teacher, data, tmp_path, 8, torch.device("cpu"), None)
    assert rebuilt.shape[0] == cached.shape[0] - 1
    assert len(list(tmp_path.glob("teacher2-*.pt"))) == 1


@pytest.mark.slow
def test_tiny_distillation_and_comparison(teachers, synthetic, capsys):
    student_dir = teachers / DISTILL_FOLDER
    common = trained_run_flags(synthetic) + ["--output-dir", str(student_dir), "--teacher-mode", "cached"]
    assert run_main(distill.main, common + ["--teacher", "all"]) == 0
    assert run_main(distill.main, common + ["--teacher", "ensemble", "--ensemble-weights", "auroc",
                                            "--teacher-mode", "online"]) == 0
    for name in ("modeld1.pth", "modeld2.pth", "modeld-ensemble.pth", "modeld1-last.pth"):
        assert (student_dir / name).is_file(), name
    checkpoint = torch.load(student_dir / "modeld-ensemble.pth", map_location="cpu", weights_only=True)
    assert [t["index"] for t in checkpoint["distillation"]["teachers"]] == [1, 2]
    assert checkpoint["model_name"] == "eeea_c2"
    # The student records its teachers' patients with its own (issue 15 §1): the same split here, so the same sets.
    sources = checkpoint["patients_seen"]["sources"]
    assert sources[0].startswith("modeld-ensemble: trained on the train part")
    assert any(s.startswith("teacher model1.pth: model1:") for s in sources)
    assert any(s.startswith("teacher model2.pth: model2:") for s in sources)

    assert run_main(compare.main,
                    ["--output-dir", str(student_dir), *LOADER, *FAST_BOOT]) == 0
    for name in ("comparison.md", "comparison.csv", "comparison-per-class.csv", "comparison-bootstrap.csv",
                 "comparison.json", "comparison-auroc.png"):
        assert (student_dir / name).is_file(), name
    with open(student_dir / "comparison.csv") as stream:
        rows = {row["model"]: row for row in csv.DictReader(stream)}
    assert rows["model3"]["status"] == "missing" and rows["modeld3"]["status"] == "missing"
    # Each row carries its run identity, and each student row its recipe difference from model1.
    identities = json.loads((student_dir / "comparison.json").read_text())["identities"]
    assert identities["model1"]["recipe"]["trained"]["recipe"]["epochs"] == 2
    assert identities["modeld1"]["data"] == identities["model1"]["data"]
    assert identities["modeld2"]["recipe"]["trained"]["recipe"]["distillation"]["teachers"][0]["index"] == 2
    assert rows["modeld1"]["recipe_vs_baseline"] == "same recipe"
    markdown = (student_dir / "comparison.md").read_text()
    assert "student's recipe vs model1" in markdown
    # The ensemble row names its teachers and weights; every student has a card saying what it came from.
    assert "ensemble: teachers 1 EEEA-Net-C2, 2 OFA-595; per-class weights by validation AUROC" in markdown
    assert "several teachers" not in markdown and rows["modeld-ensemble"]["label"].endswith("of 1+2 (auroc)")
    card = (student_dir / "modeld-ensemble-card.md").read_text()
    assert card.startswith("# Model card: EEEA-Net-C2 distilled from EEEA-Net-C2, OFA-595")
    assert "Ensemble weights: auroc" in card and "not for clinical diagnosis" in card
    assert "Distilled from 1 teacher(s): teacher 2: OFA-595" in (student_dir / "modeld2-card.md").read_text()
    # The comparison's numbers equal those of test-model.py in each folder.
    for index, folder in ((1, "1-EEEA-Net-C2"), (2, "2-OFA-595")):
        out = teachers / folder
        assert run_main(evaluation.main, ["--checkpoint", str(out / f"model{index}.pth"), *LOADER, *FAST_BOOT],
                        model=model_folders()[index][1], index=index) == 0
        report = json.loads((out / f"model{index}-test.json").read_text())
        assert float(rows[f"model{index}"]["mean_auroc"]) == pytest.approx(report["mean_auroc"], abs=1e-12)
        assert float(rows[f"model{index}"]["mean_f1@0.5"]) == pytest.approx(
            report["threshold_0.5"]["macro"]["f1"], abs=1e-12)
    # Each folder's own test results are reused by the comparison when their identity matches.
    capsys.readouterr()
    assert run_main(compare.main, ["--output-dir", str(student_dir), *LOADER, *FAST_BOOT]) == 0
    assert "reusing the test predictions of model1.pth" in capsys.readouterr().out
    again = {row["model"]: row for row in csv.DictReader(open(student_dir / "comparison.csv"))}
    assert again["model1"]["mean_auroc"] == rows["model1"]["mean_auroc"]
    # The same models again as a second "seed run": the spread across runs is zero.
    import shutil
    rerun = teachers.parent / "seed-run"
    shutil.copytree(teachers, rerun, ignore=shutil.ignore_patterns("*-last.pth", "teacher-cache"))
    assert run_main(compare.main, ["--output-dir", str(student_dir), *LOADER, *FAST_BOOT,
                                   "--seed-runs", str(rerun)]) == 0
    spread = {row["model"]: row for row in json.loads((student_dir / "comparison.json").read_text())["seed_spread"]}
    assert spread["model1"]["runs"] == 2 and spread["model1"]["mean_auroc_sd"] == pytest.approx(0, abs=1e-12)
    assert spread["modeld1"]["diff_runs"] == 2 and "training runs with different seeds" in (
        student_dir / "comparison.md").read_text()
    boot = {row["student"]: row for row in csv.DictReader(open(student_dir / "comparison-bootstrap.csv"))}
    assert boot["modeld2"]["status"] == "ok" and float(boot["modeld2"]["ci_low"]) <= float(boot["modeld2"]["ci_high"])
    assert "missing" in boot["modeld3"]["status"]


def test_all_without_any_teacher_fails_clearly(tmp_path, synthetic, capsys):
    argv = ["--teacher", "all", "--data-dir", str(synthetic / "images"), *official_split_flags(synthetic)]
    assert run_main(distill.main, argv, folder=tmp_path / DISTILL_FOLDER) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no teacher checkpoints under") and str(tmp_path) in error
    assert "1-EEEA-Net-C2/model1.pth" in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_interrupted_cache_build_resumes(teachers, synthetic, tmp_path, monkeypatch):
    import common.engine.distill as distill_module
    teacher = Teacher(teachers / "1-EEEA-Net-C2" / "model1.pth", 1)
    data = teacher_split_data(synthetic)
    complete = build_or_load_cache(teacher, data, tmp_path / "reference", 8, torch.device("cpu"), None)

    monkeypatch.setattr(distill_module, "SAVE_EVERY_BATCHES", 1)
    forward = teacher.model.forward
    calls = {"n": 0}

    def interrupted_forward(images):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return forward(images)

    monkeypatch.setattr(teacher.model, "forward", interrupted_forward)
    with pytest.raises(KeyboardInterrupt):
        build_or_load_cache(teacher, data, tmp_path / "cache", 8, torch.device("cpu"), None)
    (partial,) = (tmp_path / "cache").glob("teacher1-*.pt")
    assert torch.load(partial, weights_only=True)["filled"] == 3 * 8
    monkeypatch.setattr(teacher.model, "forward", forward)
    resumed = build_or_load_cache(teacher, data, tmp_path / "cache", 8, torch.device("cpu"), None)
    assert torch.equal(resumed, complete)


def test_online_teacher_gets_its_own_size_and_normalisation():
    class Recorder(torch.nn.Module):
        def forward(self, images):
            self.seen = images
            return torch.zeros(images.shape[0], 14)

    class FakeTeacher:
        model, img_size, mean, std = Recorder(), 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    student_mean, student_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.rand(2, 3, 32, 32)
    student_batch = (pixels - torch.tensor(student_mean).view(1, 3, 1, 1)) / torch.tensor(student_std).view(1, 3, 1, 1)
    logits = OnlineTeachers([FakeTeacher()], student_mean, student_std, torch.device("cpu"))({"image": student_batch})
    assert logits.shape == (1, 2, 14)
    seen = FakeTeacher.model.seen
    assert seen.shape == (2, 3, 48, 48)
    expected = torch.nn.functional.interpolate((pixels - 0.5) / 0.25, size=(48, 48), mode="bilinear",
                                               align_corners=False, antialias=True)
    assert torch.allclose(seen, expected, atol=1e-5)
