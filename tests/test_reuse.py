"""What a re-run reuses (issue 18 §3): earlier logits only under the same run identity, and why not otherwise."""
import copy
import gzip

import numpy as np

from common.constants import CLASS_NAMES
from common.evaluation import scoring
from common.evaluation.scoring import earlier_results, result_paths, write_reusable_results

NAMES = [f"{k:08d}_000.png" for k in range(1, 7)]
IDENTITY = {"split": {"split": "official", "label_source": "v2020", "val_fraction": 0.1, "seed": 0},
            "data": {"data_dir": "/data", "images": 6, "files_sha256": "f" * 64},
            "recipe": {"checkpoint": "/runs/model1.pth", "checkpoint_sha256": "c" * 64, "crop": "centre crop",
                       "precision": "fp32 body, fp32 head", "trained": None}}


def _stored(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(NAMES), len(CLASS_NAMES))).astype(np.float32)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    result = scoring.TestResult(tmp_path / "model1.pth", "eeea_c2", {"identity": copy.deepcopy(IDENTITY)}, probs,
                        np.zeros(logits.shape, np.uint8), NAMES, np.arange(1, 7), logits=logits)
    stem = tmp_path / "comparison-results" / "model1"
    write_reusable_results(result, stem)
    return stem, logits


def test_same_identity_reuses_the_exact_logits(tmp_path):
    stem, logits = _stored(tmp_path)
    found = earlier_results([tmp_path / "absent", stem], IDENTITY, NAMES)
    assert found.note.startswith("reused the test logits of ") and found.source == result_paths(stem)[0]
    np.testing.assert_array_equal(found.logits, logits)  # 9 significant digits give float32 back exactly


def test_every_difference_is_named(tmp_path):
    stem, _ = _stored(tmp_path)
    changes = {
        ("recipe", "checkpoint_sha256"): "the checkpoint file changed since",
        ("recipe", "crop"): "it was scored with crop 'centre crop', now 'ten-crop'",
        ("recipe", "precision"): "precision",
        ("data", "files_sha256"): "its test images differ (the image files' sizes or times changed)",
        ("data", "data_dir"): "data_dir /data then, /other now",
        ("split", "label_source"): "it was scored on another split (label_source v2020 then, 2017 now)",
    }
    values = {"checkpoint_sha256": "d" * 64, "crop": "ten-crop", "precision": "bf16 body, fp32 head",
              "files_sha256": "e" * 64, "data_dir": "/other", "label_source": "2017"}
    for (block, key), expected in changes.items():
        identity = copy.deepcopy(IDENTITY)
        identity[block][key] = values[key]
        found = earlier_results([stem], identity, NAMES)
        assert found.logits is None and found.note.startswith(f"scored again, because {result_paths(stem)[0]}: ")
        assert expected in found.note, (key, found.note)
    # Where the trained recipe or the checkpoint's path changed only, the logits are the same: reused.
    moved = copy.deepcopy(IDENTITY)
    moved["recipe"]["checkpoint"] = "/elsewhere/model1.pth"
    assert earlier_results([stem], moved, NAMES).logits is not None


def test_other_images_or_rewritten_predictions_are_not_reused(tmp_path):
    stem, _ = _stored(tmp_path)
    found = earlier_results([stem], IDENTITY, NAMES[::-1])
    assert found.logits is None and "lists other images" in found.note
    predictions = result_paths(stem)[1]
    predictions.write_bytes(gzip.compress(gzip.decompress(predictions.read_bytes()).replace(b"0.", b"1.", 1)))
    found = earlier_results([stem], IDENTITY, NAMES)
    assert found.logits is None and "rewritten after the report" in found.note
    nothing = earlier_results([tmp_path / "none"], IDENTITY, NAMES)
    assert nothing.logits is None and nothing.note.startswith("scored again, because there is no earlier result")
