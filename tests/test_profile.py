"""Parameter / thop / MAC counts of docs/architectures.md §3 and §15, and the para-test output format. CPU, offline."""
import re

import pytest

from common.commands.para_test import para_test_main
from common.errors import UserError
from common.models import create_model
from common.models.profile import count_parameters, macs, median_latency_ms, thop_total

DASHES = "-" * 90


pytestmark = pytest.mark.usefixtures("one_thread")


# name -> {(classes, input size): (params, thop total, MACs)}; AutoFormerV2-base and Visformer are checked through
# para-test below, so that each is built only once.
SMALL_MODEL_COUNTS = {
    "eeea_c2": {
        (1000, 224): (5_995_904, 312_597_824, 291_204_032),
        (14, 224): (4_732_838, 311_335_744, 289_941_952),
        (1000, 192): (5_995_904, 230_758_144, 215_040_256),
        (14, 192): (4_732_838, 229_496_064, 213_778_176),
    },
    "ofa595": {
        (1000, 224): (9_135_928, 544_770_480, 512_861_680),
        (14, 224): (7_620_446, 543_255_984, 511_347_184),
        (1000, 236): (9_135_928, 631_454_088, 595_189_032),
        (14, 236): (7_620_446, 629_939_592, 593_674_536),
    },
    "chexnet": {
        (1000, 224): (7_978_856, 2_897_007_104, 2_834_161_664),
        (14, 224): (6_968_206, 2_895_997_440, 2_833_152_000),
    },
}


@pytest.mark.parametrize("name", list(SMALL_MODEL_COUNTS))
def test_counts_of_the_convolutional_models(name):
    model = create_model(name, num_classes=1000)
    entries = len(model.state_dict())
    for classes in (1000, 14):
        if classes == 14:
            model.reset_classifier(14)
        for (expected_classes, size), (params, thop, mac) in SMALL_MODEL_COUNTS[name].items():
            if expected_classes != classes:
                continue
            assert count_parameters(model) == params
            assert thop_total(model, size) == float(thop), (name, classes, size)
            assert macs(model, size) == mac, (name, classes, size)
    # thop profiled a copy: no total_ops/total_params buffers were left behind.
    assert len(model.state_dict()) == entries


def test_median_latency_is_positive_and_leaves_the_model_alone():
    model = create_model("eeea_c2", num_classes=14).train()
    latency = median_latency_ms(model, 32, "cpu", repeats=2, warmup=1)
    assert latency > 0
    assert model.training


def _run_para_test(capsys, name, *args):
    para_test_main(["--repeats", "1", "--device", "cpu", *args], name)
    return capsys.readouterr().out.splitlines()


def test_para_test_eeea_prints_the_original_lines(capsys):
    lines = _run_para_test(capsys, "eeea_c2")
    assert lines[0] == DASHES
    assert lines[1] == "|           weight name          |               weight shape               |   number   |"
    assert [len(cell) for cell in lines[1].split("|")[1:-1]] == [32, 42, 12]
    assert lines[2] == DASHES
    assert lines[3] == "| first_conv.conv.weight         | torch.Size([16, 3, 3, 3])                | 432        |"
    # Long names are not cut.
    assert any(re.fullmatch(r"\| blocks\.1\.mobile_inverted_conv\.inverted_bottleneck\.conv\.weight \| "
                            r"torch\.Size\(\[48, 16, 1, 1\]\) +\| 768 +\|", line) for line in lines)
    total = lines.index("The total number of parameters: 4732838")
    assert lines[total - 1] == DASHES
    assert lines[total + 1] == "The parameters of Model MobileNetV3: 4.732838M"
    assert lines[total + 2] == "The total number of parameters: 4732838，4.732838M"
    assert lines[total + 3] == DASHES
    assert "[INFO] Register count_convNd() for <class 'torch.nn.modules.conv.Conv2d'>." in lines
    assert "Total FLOPs: 311335744.0" in lines
    text = "\n".join(lines)
    assert "14-class head at 224x224, batch 1: 289941952" in text
    assert "native 192x192, batch 1: 213778176" in text
    assert re.search(r"Median latency of one 224x224 image on cpu .*: \d+\.\d\d ms", text)


def test_para_test_quiet_thop_hides_only_thop(capsys):
    lines = _run_para_test(capsys, "eeea_c2", "--quiet-thop", "--img-size", "96")
    assert not any(line.startswith("[INFO]") for line in lines)
    assert "Total FLOPs: " + str(float(thop_total(create_model("eeea_c2"), 96))) in lines


@pytest.mark.slow  # transformers, and an ONNX export each
@pytest.mark.parametrize("name, original_lines, extra", [
    ("visformer_small",
     ["The total number of parameters: 40219592", "The parameters of Model Visformer: 40.219592M",
      "Total FLOPs: 4757290496.0"],
     ["Parameters with a 14-class head: 39461358 (39.461358M)",
      "thop total with a 14-class head at 224x224, batch 1: 4756533248.0",
      "MACs (FlopCounterMode / 2) with a 14-class head at 224x224, batch 1: 4878623232"]),
    ("autoformerv2_base",
     ["The total number of parameters: 71125762", "The parameters of Model SSSTransformer: 71.125762M",
      "Total FLOPs: 12749295552.0"],
     ["Parameters with a 14-class head: 70367528 (70.367528M)",
      "thop total with a 14-class head at 224x224, batch 1: 12748538304.0",
      "MACs (FlopCounterMode / 2) with a 14-class head at 224x224, batch 1: 13654255104"]),
])
def test_para_test_of_the_transformers_counts_the_original_head_then_14_classes(capsys, name, original_lines, extra):
    lines = _run_para_test(capsys, name)
    for line in original_lines + extra:
        assert line in lines
    assert any("1000-class head at 224x224" in line for line in lines)


def test_para_test_chexnet_counts(capsys):
    lines = _run_para_test(capsys, "chexnet")
    assert "The parameters of Model DenseNet121: 6.968206M" in lines
    assert "Total FLOPs: 2895997440.0" in lines


def test_para_test_rejects_bad_arguments(capsys):
    with pytest.raises(UserError, match="img_size 30"):
        para_test_main(["--img-size", "30"], "visformer_small")
    with pytest.raises(UserError, match="--device"):
        para_test_main(["--device", "tpu0"], "eeea_c2")
    with pytest.raises(SystemExit) as exit_info:
        para_test_main(["--repeats", "0"], "eeea_c2")
    assert exit_info.value.code == 2
    assert "--repeats" in capsys.readouterr().err
