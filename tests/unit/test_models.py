"""Which model files the graph needs, which ComfyUI lacks, and the sentence saying where they go."""

import json
from pathlib import Path

from handler.models import (
    ModelFile,
    missing_in_error,
    missing_models,
    missing_models_sentence,
    required_models,
)

REPO = Path(__file__).resolve().parents[2]
GRAPH = json.loads((REPO / "comfy_workflows" / "flux2_klein_9b_i2i.json").read_text())
UNET = ModelFile("UNETLoader", "unet_name", "diffusion_models", "flux-2-klein-9b-fp8.safetensors")
CLIP = ModelFile("CLIPLoader", "clip_name", "text_encoders", "qwen_3_8b_fp8mixed.safetensors")
VAE = ModelFile("VAELoader", "vae_name", "vae", "flux2-vae.safetensors")
DOCS = "(see docs/runpod.md, 'Where the model files go')"


def info_listing(**files: list[str]) -> dict:
    """An /object_info with the three loaders, each listing the given files."""
    loaders = {"UNETLoader": "unet_name", "CLIPLoader": "clip_name", "VAELoader": "vae_name"}
    return {
        node: {"input": {"required": {name: [files.get(name, []), {}]}}}
        for node, name in loaders.items()
    }


def test_the_klein_graph_needs_its_three_model_files_in_their_folders():
    assert sorted(required_models(GRAPH), key=lambda m: m.folder) == [UNET, CLIP, VAE]
    assert VAE.path == "models/vae/flux2-vae.safetensors"


def test_a_graph_without_loaders_needs_no_model_file():
    assert required_models({"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}) == []


def test_files_comfyui_does_not_list_are_missing():
    info = info_listing(unet_name=[UNET.file], clip_name=["other.safetensors"])
    assert missing_models([UNET, CLIP, VAE], info) == [CLIP, VAE]


def test_nothing_is_missing_when_every_file_is_listed():
    info = info_listing(unet_name=[UNET.file], clip_name=[CLIP.file], vae_name=[VAE.file, "x"])
    assert missing_models([UNET, CLIP, VAE], info) == []


def test_a_loader_comfyui_does_not_know_means_its_file_is_missing():
    assert missing_models([VAE], {}) == [VAE]


COMFY_REFUSAL = (
    "Processing failed: VAELoader: Value not in list: vae_name: 'flux2-vae.safetensors' not in "
    "['pixel_space']; CLIPLoader: Value not in list: clip_name: "
    "'qwen_3_8b_fp8mixed.safetensors' not in []"
)


def test_comfyuis_value_not_in_list_names_the_missing_files():
    assert missing_in_error([UNET, CLIP, VAE], COMFY_REFUSAL) == [CLIP, VAE]


def test_other_refusals_name_no_model_file():
    message = "Processing failed: KSamplerSelect: Value not in list: sampler_name: 'x' not in []"
    assert missing_in_error([UNET, CLIP, VAE], message) == []


def test_one_missing_file_is_one_sentence_with_its_folder():
    assert missing_models_sentence([VAE]) == (
        f"ComfyUI has no model file flux2-vae.safetensors: put it in models/vae/ {DOCS}"
    )


def test_several_missing_files_are_one_sentence_with_their_paths():
    assert missing_models_sentence([CLIP, VAE]) == (
        "ComfyUI lacks model files: put them at "
        "models/text_encoders/qwen_3_8b_fp8mixed.safetensors, models/vae/flux2-vae.safetensors "
        f"{DOCS}"
    )
