"""`flowopd sample` and `flowopd eval` on a tiny random Qwen-Image (``qwen-image:<folder>``) with its protocol settings
(true CFG 4), and a Qwen-Image LoRA refused on an SD3 or FLUX base (and theirs on Qwen-Image) in one line naming both."""

import json
import os

import pytest
from test_cli import one_line_error
from test_flux_backbone import save_tiny_flux
from test_flux_cli import _saved_lora
from test_qwen_image_backbone import save_tiny_qwen_image
from test_sd3_backbone import save_tiny_sd3

PX = 16  # eval at 16 px (--resolution): 8 x 8 latents


@pytest.fixture(scope="module")
def qwen_spec(tmp_path_factory):
    return f"qwen-image:{save_tiny_qwen_image(tmp_path_factory.mktemp('qwen-cli'))}"


@pytest.fixture(scope="module")
def qwen_lora(qwen_spec, tmp_path_factory):
    return _saved_lora(qwen_spec, tmp_path_factory.mktemp("loras") / "qwen-lora")


def test_default_sampling_is_the_pipelines_true_cfg(qwen_spec):
    from flowopd.models import load_backbone

    backbone = load_backbone(qwen_spec)
    s = backbone.default_sampling
    assert s["cfg"] == 4.0 and s["steps"] == 50 and "guidance" not in s
    assert (s["spacing"], s["shift_terminal"]) == ("pipeline", 0.02)  # QwenImagePipeline's schedule, its scheduler's stretch
    assert s["resolution"] == min(512, backbone.native_resolution) and s["shift"] == backbone.shift


def test_sample_on_a_tiny_qwen_image(qwen_spec, tmp_path, run_cli):
    from PIL import Image

    out = tmp_path / "img.png"
    res = run_cli("sample", "--prompt", "a red cat", "--model", qwen_spec, "--out", str(out), "--steps", "2", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size[0] == Image.open(out).size[1] and "cfg 4.0" in res.stdout


def test_sample_with_a_qwen_image_lora_folder_as_the_model(qwen_lora, tmp_path, run_cli):
    out = tmp_path / "lora.png"
    res = run_cli("sample", "--prompt", "a red cat", "--model", str(qwen_lora), "--out", str(out), "--steps", "1", "--cfg", "1")
    assert res.returncode == 0, res.stderr
    assert out.is_file()


def test_eval_ocr_on_a_tiny_qwen_image_records_its_protocol(qwen_spec, shared_data, tmp_path, run_cli):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLOWOPD_") and k.endswith("_URL"))}
    env.update(FLOWOPD_DATA_DIR=str(shared_data), FLOWOPD_WEIGHTS_DIR=str(tmp_path / "w"), FLOWOPD_CACHE_DIR=str(tmp_path / "c"))
    out = tmp_path / "eval"
    args = ("eval", "--suite", "ocr", "--model", qwen_spec, "--limit", "1", "--steps", "2", "--resolution", str(PX), "--out", str(out))
    res = run_cli(*args, "--no-report", env=env)
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["world"] == "real" and s["metrics"]["ocr/accuracy"]["n"] == 1
    sampling = s["suites"]["ocr"]["sampling"]
    assert sampling["cfg"] == 4.0 and sampling["steps"] == 2 and sampling["resolution"] == PX


@pytest.mark.parametrize("other", ["sd3", "flux"])
def test_a_qwen_image_lora_and_another_backbones_lora_are_refused_naming_both(other, qwen_spec, qwen_lora, tmp_path_factory, run_cli):
    folder = tmp_path_factory.mktemp(f"{other}-cli")
    spec = f"sd3:{save_tiny_sd3(folder)}" if other == "sd3" else f"flux:{save_tiny_flux(folder)}"
    their_lora = _saved_lora(spec, tmp_path_factory.mktemp("loras") / f"{other}-lora")
    out = tmp_path_factory.mktemp("ev") / "ev"
    for base, lora in ((spec, qwen_lora), (qwen_spec, their_lora)):
        args = ("eval", "--suite", "ocr", "--model", base, "--lora", str(lora), "--limit", "1", "--out", str(out))
        line = one_line_error(run_cli(*args), str(lora))
        assert "Qwen-Image" in line and other.upper() in line.upper(), line
    assert not out.exists()


def test_a_teacher_adapter_from_another_backbone_is_refused_on_qwen_image(qwen_spec, qwen_lora, tmp_path):
    from flowopd.errors import FlowOPDError
    from flowopd.models import check_base

    sd3_spec = f"sd3:{save_tiny_sd3(tmp_path / 'sd3')}"
    with pytest.raises(FlowOPDError) as err:
        check_base(qwen_lora, sd3_spec)
    assert "Qwen-Image" in str(err.value) and "SD3" in str(err.value) and "\n" not in str(err.value)
