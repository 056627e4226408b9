"""`flowopd sample` and `flowopd eval` on a tiny random FLUX.1 (``flux:<folder>``) with FLUX's protocol settings (cfg 1,
the embedded guidance), and a LoRA trained on one backbone refused on another in one line naming both."""

import json
import os

import pytest
import torch
from test_cli import one_line_error
from test_flux_backbone import save_tiny_flux
from test_sd3_backbone import save_tiny_sd3

PX = 16  # eval at 16 px (--resolution): 8 x 8 latents


@pytest.fixture(scope="module")
def flux_spec(tmp_path_factory):
    return f"flux:{save_tiny_flux(tmp_path_factory.mktemp('flux-cli'))}"


@pytest.fixture(scope="module")
def sd3_spec(tmp_path_factory):
    return f"sd3:{save_tiny_sd3(tmp_path_factory.mktemp('sd3-cli'))}"


def _saved_lora(spec: str, folder):
    """A rank-4 LoRA on ``spec``'s transformer, saved as `flowopd train` saves it (lora_info.json: base, base_digest)."""
    from flowopd.lora import add_lora, save_lora
    from flowopd.models import load_backbone, model_digest

    backbone = load_backbone(spec)
    torch.manual_seed(0)
    add_lora(backbone.transformer, 4, 4)
    save_lora(backbone.transformer, folder, {"kind": "flowopd-lora", "name": folder.name, "base": spec, "base_digest": model_digest(spec)})
    return folder


@pytest.fixture(scope="module")
def flux_lora(flux_spec, tmp_path_factory):
    return _saved_lora(flux_spec, tmp_path_factory.mktemp("loras") / "flux-lora")


@pytest.fixture(scope="module")
def sd3_lora(sd3_spec, tmp_path_factory):
    return _saved_lora(sd3_spec, tmp_path_factory.mktemp("loras") / "sd3-lora")


def test_default_sampling_is_cfg_one_with_the_embedded_guidance(flux_spec):
    from flowopd.models import load_backbone

    backbone = load_backbone(flux_spec)
    s = backbone.default_sampling
    assert s["cfg"] == 1.0 and s["guidance"] == pytest.approx(3.5) and s["steps"] == 28
    assert (s["spacing"], s["shift_terminal"]) == ("pipeline", None)  # FluxPipeline's schedule (evaluate and sample use it)
    assert s["resolution"] == min(512, backbone.native_resolution) and s["shift"] == backbone.shift


def test_sample_on_a_tiny_flux(flux_spec, tmp_path, run_cli):
    from PIL import Image

    out = tmp_path / "img.png"
    res = run_cli("sample", "--prompt", "a red cat", "--model", flux_spec, "--out", str(out), "--steps", "2", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size[0] == Image.open(out).size[1]
    # cfg other than 1 on a guidance-distilled FLUX: one line, before sampling
    one_line_error(run_cli("sample", "--prompt", "x", "--model", flux_spec, "--out", str(tmp_path / "b.png"), "--cfg", "4.5"), "guidance")


def test_sample_with_a_flux_lora_folder_as_the_model(flux_lora, tmp_path, run_cli):
    out = tmp_path / "lora.png"
    res = run_cli("sample", "--prompt", "a red cat", "--model", str(flux_lora), "--out", str(out), "--steps", "1")
    assert res.returncode == 0, res.stderr
    assert out.is_file()


def test_eval_ocr_on_a_tiny_flux_records_its_protocol(flux_spec, shared_data, tmp_path, run_cli):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLOWOPD_") and k.endswith("_URL"))}
    env.update(FLOWOPD_DATA_DIR=str(shared_data), FLOWOPD_WEIGHTS_DIR=str(tmp_path / "w"), FLOWOPD_CACHE_DIR=str(tmp_path / "c"))
    out = tmp_path / "eval"
    args = ("eval", "--suite", "ocr", "--model", flux_spec, "--limit", "1", "--steps", "2", "--resolution", str(PX), "--out", str(out))
    args += ("--no-report",)
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["world"] == "real" and s["metrics"]["ocr/accuracy"]["n"] == 1
    sampling = s["suites"]["ocr"]["sampling"]
    assert sampling["cfg"] == 1.0 and sampling["guidance"] == pytest.approx(3.5) and sampling["steps"] == 2
    assert sampling["resolution"] == PX


def _cross(res, *needles):
    line = one_line_error(res, *needles)
    assert "sd3" in line.lower() and "flux" in line.lower(), line
    return line


def test_a_flux_lora_on_sd3_and_an_sd3_lora_on_flux_are_refused_naming_both(flux_spec, sd3_spec, flux_lora, sd3_lora, tmp_path, run_cli):
    for base, lora in ((sd3_spec, flux_lora), (flux_spec, sd3_lora)):
        args = ("eval", "--suite", "ocr", "--model", base, "--lora", str(lora), "--limit", "1", "--out", str(tmp_path / "ev"))
        _cross(run_cli(*args), str(lora))
    assert not (tmp_path / "ev").exists()


def test_a_teacher_adapter_from_the_other_backbone_is_refused(flux_spec, sd3_lora):
    from flowopd.errors import FlowOPDError
    from flowopd.models import check_base

    with pytest.raises(FlowOPDError) as err:
        check_base(sd3_lora, flux_spec)
    assert "SD3" in str(err.value) and "FLUX" in str(err.value) and "\n" not in str(err.value)
