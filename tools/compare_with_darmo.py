"""Check common.models against darmo 0.1.15 (the original repository's model library): same keys, counts, outputs.

darmo is a reference, never a dependency. Install it OUTSIDE the project's environment, e.g. into a scratch folder
that only this script sees:

    .venv/bin/pip install --target /tmp/darmo_ref --no-deps darmo==0.1.15 ofa==0.0.4.post2007200808 'setuptools<81'
    PYTHONPATH=/tmp/darmo_ref .venv/bin/python tools/compare_with_darmo.py

Expected: identical key names and order (395 / 417 entries), max |diff| = 0 in float64 for EEEA-Net-C2 and OFA-595
at 224 and their native sizes, and for AutoFormerV2-base after converting darmo's Cream-format state dict.
"""
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import thop
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")
import darmo  # noqa: E402

from common.models import create_model, load_pretrained  # noqa: E402
from common.models.profile import count_parameters, thop_total  # noqa: E402

torch.manual_seed(0)
for darmo_name, our_name, native in (("eeea_c2", "eeea_c2", 192), ("ofa595_1k", "ofa595", 236)):
    ref = darmo.create_model(darmo_name, num_classes=1000, pretrained=False).double().eval()
    ours = create_model(our_name, num_classes=1000).double().eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    same_keys = list(ref_sd) == list(our_sd)
    same_shapes = same_keys and all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)
    ours.load_state_dict(ref_sd, strict=True)
    diffs = []
    for size in (224, native):
        x = torch.randn(2, 3, size, size, dtype=torch.float64)
        with torch.no_grad():
            diffs.append(f"@{size} max|diff| = {(ref(x) - ours(x)).abs().max().item():.3g}")
    print(f"{darmo_name} vs {our_name}: {len(ref_sd)} / {len(our_sd)} entries, identical key order {same_keys}, "
          f"identical shapes {same_shapes}; float64 batch 2: " + ", ".join(diffs))
    print(f"  class names: darmo {ref._get_name()}, ours {ours._get_name()}; "
          f"darmo batch-1 output shape {tuple(ref(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape)}, "
          f"ours {tuple(ours(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape)}")

    # Counts (float32, batch 1, 1000 classes): darmo's module tree through thop vs ours.
    ref32, ours32 = copy.deepcopy(ref).float(), copy.deepcopy(ours).float()
    darmo_thop = thop.profile(copy.deepcopy(ref32), inputs=(torch.randn(1, 3, 224, 224),), verbose=False)[0]
    print(f"  params darmo {count_parameters(ref32)} ours {count_parameters(ours32)}; "
          f"thop @224 darmo {darmo_thop} ours {thop_total(ours32, 224)}")

    # The seed's model1/model2.pth layout: darmo after reset_classifier(14) (head classifier.{weight,bias}).
    ref.reset_classifier(14)
    ref.double().eval()
    ours14 = create_model(our_name, num_classes=14).double().eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model1.pth"
        torch.save(ref.state_dict(), path)
        load_pretrained(ours14, our_name, path)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        print(f"  darmo reset_classifier(14) state dict -> ours: max|diff| = {(ref(x) - ours14(x)).abs().max().item():.3g}")

# AutoFormerV2-base: darmo's Cream-format module tree, converted by load_pretrained into timm's swin_s3_base_224.
torch.set_num_threads(1)  # shared 2-core machine: OpenMP barriers stall otherwise
ref = darmo.create_model("autoformerv2_base", num_classes=1000, pretrained=False).eval()
ours = create_model("autoformerv2_base", num_classes=1000).eval()
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "autoformerv2_base.pt"
    torch.save(ref.state_dict(), path)
    load_pretrained(ours, "autoformerv2_base", path)
ref_thop = thop.profile(copy.deepcopy(ref), inputs=(torch.randn(1, 3, 224, 224),), verbose=False)[0]
print(f"autoformerv2_base: darmo {ref._get_name()} {len(ref.state_dict())} entries, ours {len(ours.state_dict())}; "
      f"params darmo {count_parameters(ref)} ours {count_parameters(ours)}; thop @224 darmo {ref_thop} "
      f"ours {thop_total(ours, 224)}")
ref.double()
ours.double()
x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
with torch.no_grad():
    print(f"  float64 batch 2 @224 max|diff| = {(ref(x) - ours(x)).abs().max().item():.3g}")
