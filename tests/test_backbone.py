"""Base models and their weights: timm's pretrained weights through the hub cache (never a
download from the network here), local checkpoints, random weights said out loud, and the
classifier's path."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from tiny_models import tiny_swin, tiny_vit
from train_fixtures import make_learnable_task, train_args

from heartlora.adapter_io import read_adapter_metadata
from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.models.backbone import (
    classifier_path,
    create_base_model,
    default_pretrained,
    pretrained_tag,
    takes_img_size,
    weights_label,
)
from heartlora.training.config import build_config
from heartlora.training.trainer import create_run_model

# timm's own tiny test architecture; its pretrained cfg points at the hub repo below.
HUB_MODEL = "test_vit.r160_in1k"
HUB_REPO = "models--timm--test_vit.r160_in1k"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: whatever is not put here cannot be had."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    return cache


def _cache_file(cache, filename: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """Put a test_vit state dict into ``cache`` where huggingface_hub keeps a download."""
    torch.manual_seed(seed)
    state = timm.create_model("test_vit").state_dict()
    snapshot = cache / HUB_REPO / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (cache / HUB_REPO / "refs").mkdir()
    (cache / HUB_REPO / "refs" / "main").write_text("0123abcd")
    if filename.endswith(".safetensors"):
        save_file(state, str(snapshot / filename))
    else:
        torch.save(state, snapshot / filename)
    return state


def test_offline_without_a_cached_file_is_a_fast_one_line_error(hub_cache):
    started = time.perf_counter()
    with pytest.raises(HeartLoRAError) as error:
        create_base_model(HUB_MODEL, num_classes=3)
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "\n" not in message and HUB_MODEL in message and "`checkpoint`" in message
    assert "HF_HUB_OFFLINE" in message


def test_offline_a_run_on_uncached_pretrained_weights_stops_in_one_line_within_15_s(
    hub_cache, toy, tmp_path, capsys
):
    # a real tag, the run's base: plain timm would go to the hub for its 350 MB
    model = "vit_base_patch16_224.augreg_in21k"
    args = train_args(toy, None, tmp_path / "run", "lora", epochs=1, model=model)
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 15
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{model}: timm's pretrained weights (hf-hub:timm/" in error
    assert "not in the local cache and HF_HUB_OFFLINE is set" in error and "`checkpoint`" in error
    assert not (tmp_path / "run").exists()


_LOAD_BASE = """import sys
from heartlora.models.backbone import create_base_model
from heartlora.errors import HeartLoRAError
try:
    create_base_model(sys.argv[1], num_classes=3)
except HeartLoRAError as error:
    sys.exit(str(error))
"""


def test_online_timm_downloads_and_its_failure_is_one_line(tmp_path):
    """Without HF_HUB_OFFLINE nothing is probed: timm's hub code asks the hub (here a local one
    that has nothing), and what it raises comes back as one line naming model and source."""
    asked: list[str] = []

    class EmptyHub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    hub = ThreadingHTTPServer(("127.0.0.1", 0), EmptyHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "",
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_BASE, HUB_MODEL],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        hub.shutdown()
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip()
    assert "\n" not in error, error
    assert f"{HUB_MODEL}: cannot load timm's pretrained weights from hf-hub:timm/" in error
    assert f"/timm/{HUB_MODEL}/resolve/main/model.safetensors" in asked


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_cached_hub_weights_load_through_timm(hub_cache, filename):
    state = _cache_file(hub_cache, filename)
    model = create_base_model(HUB_MODEL, num_classes=3)
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    assert model.head.weight.shape[0] == 3  # timm's classifier reset for another class count
    # a bare name with pretrained=True takes timm's default tag: the same file
    bare = create_base_model("test_vit", pretrained=True, num_classes=3, img_size=32)
    assert torch.equal(bare.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert bare.pos_embed.shape[1] == 1 + 4  # resampled by test_vit's checkpoint_filter_fn


def test_which_names_ask_for_pretrained_weights(tmp_path):
    assert default_pretrained(HUB_MODEL) and default_pretrained("vit_mini_patch4_28")
    assert not default_pretrained("test_vit")
    assert pretrained_tag("test_vit") == "r160_in1k" and pretrained_tag("test_vit.nope") is None
    assert weights_label("test_vit") == "random"
    assert weights_label("test_vit", pretrained=True) == "pretrained:r160_in1k"
    assert weights_label("vit_mini_patch4_28") == "pretrained:fmnist"
    assert weights_label(HUB_MODEL, checkpoint="w.safetensors") == "w.safetensors"
    with pytest.raises(HeartLoRAError, match="timm has no pretrained weights for 'test_vit.nope'"):
        weights_label("test_vit.nope", pretrained=True)
    with pytest.raises(HeartLoRAError, match="no base weights named for 'test_vit'.*test_vit.r160"):
        create_base_model("test_vit")
    random = create_base_model("test_vit", pretrained=False, num_classes=2)
    assert random.head.out_features == 2
    checkpoint = tmp_path / "base.safetensors"
    save_file(random.state_dict(), str(checkpoint))
    reloaded = create_base_model(HUB_MODEL, checkpoint=checkpoint, num_classes=2)  # it wins
    assert torch.equal(reloaded.head.weight, random.head.weight)


def test_config_refuses_pretrained_for_a_model_without_weights():
    with pytest.raises(HeartLoRAError, match="pretrained: timm has no pretrained weights"):
        build_config(None, ["model=test_vit.nope", "pretrained=true"])
    assert build_config(None, ["model=test_vit.nope", "pretrained=true", "checkpoint=w.pth"])


def test_a_run_model_from_random_weights_says_so_once(capsys):
    config = build_config(None, ["model=test_vit", "img_size=32"])
    lines = []
    model = create_run_model(config, 3, log=lines.append)
    assert model.head.out_features == 3
    assert len(lines) == 1 and lines[0].startswith("warning: test_vit starts from random weights")
    assert "`pretrained: true` (timm's r160_in1k weights)" in lines[0]
    lines.clear()
    create_run_model(
        build_config(None, ["model=vit_mini_patch4_28", "img_size=28"]), 3, lines.append
    )
    assert lines == []


def test_only_families_that_resample_take_the_run_s_image_size():
    assert takes_img_size("vit_small_patch16_224") and not takes_img_size(
        "swin_tiny_patch4_window7_224"
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_learnable_task(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize(
    "extra, weights",
    [({"pretrained": "false"}, "random"), ({}, "pretrained:fmnist")],
)
def test_result_and_adapter_record_the_base_weights(toy, tmp_path, capsys, extra, weights):
    args = train_args(toy, "unused", tmp_path / "run", "lora", epochs=1, **extra)
    checkpoint_at = args.index("--checkpoint")
    del args[checkpoint_at : checkpoint_at + 2]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == (weights == "random")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["weights"] == weights
    assert read_adapter_metadata(tmp_path / "run" / "adapter").run.weights == weights


def test_classifier_path_finds_vit_and_swin_heads():
    assert classifier_path(tiny_vit()) == "head"
    assert classifier_path(tiny_swin()) == "head.fc"
