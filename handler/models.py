"""The model files a graph needs, which of them ComfyUI lacks, and the sentence that says where
they go. Pure functions: the worker feeds them the graph, `/object_info` and ComfyUI's errors."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DOCS_SECTION = "docs/runpod.md, 'Where the model files go'"
# Loader node type -> (the input naming the file, ComfyUI's models/ folder for it).
LOADERS: dict[str, tuple[str, str]] = {
    "UNETLoader": ("unet_name", "diffusion_models"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "VAELoader": ("vae_name", "vae"),
}


@dataclass(frozen=True)
class ModelFile:
    """One file a loader node of the graph reads."""

    class_type: str
    input_name: str
    folder: str
    file: str

    @property
    def path(self) -> str:
        """Where it goes under ComfyUI's (or the network volume's) models folder."""
        return f"models/{self.folder}/{self.file}"


def required_models(graph: Mapping[str, Any]) -> list[ModelFile]:
    """The model files the graph's loader nodes name, in node order."""
    found: list[ModelFile] = []
    for node in graph.values():
        class_type = str(node.get("class_type", ""))
        if class_type not in LOADERS:
            continue
        input_name, folder = LOADERS[class_type]
        file = node.get("inputs", {}).get(input_name)
        if isinstance(file, str):
            found.append(ModelFile(class_type, input_name, folder, file))
    return found


def listed_files(object_info: Mapping[str, Any], model: ModelFile) -> list[str]:
    """The file names ComfyUI offers for the model's loader input ([] if it lacks the node)."""
    node = object_info.get(model.class_type)
    spec = node.get("input", {}).get("required", {}).get(model.input_name) if node else None
    choices = spec[0] if isinstance(spec, list) and spec else None
    return [str(choice) for choice in choices] if isinstance(choices, list) else []


def missing_models(required: list[ModelFile], object_info: Mapping[str, Any]) -> list[ModelFile]:
    """The required files that ComfyUI's `/object_info` does not list."""
    return [model for model in required if model.file not in listed_files(object_info, model)]


def missing_in_error(required: list[ModelFile], message: str) -> list[ModelFile]:
    """The required files a ComfyUI "Value not in list" refusal names."""
    return [m for m in required if f"{m.input_name}: '{m.file}' not in" in message]


def missing_models_sentence(missing: list[ModelFile]) -> str:
    """One sentence naming the missing files and where they go."""
    if len(missing) == 1:
        [model] = missing
        return (
            f"ComfyUI has no model file {model.file}: put it in models/{model.folder}/ "
            f"(see {DOCS_SECTION})"
        )
    paths = ", ".join(model.path for model in missing)
    return f"ComfyUI lacks model files: put them at {paths} (see {DOCS_SECTION})"
