"""What keeps `python -m codec encode|decode` quick to start (codec/core/lean_imports.py): loading a
codec imports none of the packages it never runs, the packages imported in part still import in
full afterwards, and each shortcut computes what the library call it replaces computes.
(The times themselves: benchmarks/cli_startup.py.)"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from codec.core.backbone import DEMO_DIR, SD_SCHEDULE, _ddim_scheduler
from codec.core.entropy_coding import GaussianConditional, get_scale_table

REPO = Path(__file__).resolve().parents[2]
# Imported by compressai's, scipy's and diffusers' __init__ files, never used by the codec (scipy.special:
# only to build Gaussian tables, which the analytic mode the demo codes in never needs).
NEVER_IMPORTED = ("torch._dynamo", "transformers", "torch_geometric", "torchvision", "sympy", "triton", "scipy.special",
                  "scipy.integrate", "scipy.optimize", "compressai.datasets", "compressai.zoo",
                  "diffusers.models.autoencoders.autoencoder_kl", "diffusers.models.transformers.ace_step_transformer")


def _python(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_a_codec_loads_and_codes_without_the_packages_it_never_runs(tmp_path):
    """The demo backbone with its learned adapter, as `python -m codec` loads it, encodes and decodes;
    then each package imported in part gives its whole self, with the very classes loaded before."""
    photo = tmp_path / "photo.png"
    from tests.photos import photo as photo_named
    photo_named("kite", 96).save(photo)
    run = _python(
        "import sys, json\n"
        "from codec.core.diffusion_codec import DiffusionCodec\n"
        "codec = DiffusionCodec.load('demo')\n"
        f"result = codec.encode({str(photo)!r}, target_bpp=0.2)\n"
        "decoded = codec.decode(result.data).image\n"
        f"loaded = sorted(m for m in {NEVER_IMPORTED!r} if m in sys.modules)\n"
        "print('full imports', file=sys.stderr, flush=True)\n"
        "import torch._dynamo, scipy.stats, compressai.zoo\n"
        "from diffusers import AutoencoderKL, UNet2DModel, PipelineQuantizationConfig\n"
        "from diffusers.models.autoencoders import AutoencoderTiny\n"
        "from diffusers.models.unets import UNet2DConditionModel\n"
        "from diffusers.hooks import apply_group_offloading\n"
        "from compressai.entropy_models import GaussianConditional\n"
        "import diffusers.models.unets.unet_2d as unet_2d, codec.core.entropy_coding as ours\n"
        "full = [type(codec.backbone.unet) is UNet2DModel is unet_2d.UNet2DModel,\n"
        "        issubclass(ours.GaussianConditional, GaussianConditional),\n"
        "        callable(torch._dynamo.disable) and hasattr(torch._dynamo, 'optimize'),\n"
        "        float(scipy.stats.norm.ppf(0.5)) == 0.0, compressai.zoo.bmshj2018_factorized(quality=1) is not None,\n"
        "        all(isinstance(c, type) for c in (AutoencoderKL, AutoencoderTiny, UNet2DConditionModel, PipelineQuantizationConfig))]\n"
        "print(json.dumps({'loaded': loaded, 'full': full, 'size': list(decoded.size)}))"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"loaded": [], "full": [True] * 6, "size": [96, 64]}
    assert run.stderr.startswith("full imports\n"), run.stderr  # no warning on the way (torch_geometric's comes after)


@pytest.mark.parametrize("tail_mass", [1e-9, 1e-6, 1e-3, 0.04])
def test_the_gaussian_tables_are_compressais(tail_mass):
    """The quantile without scipy.stats: the same number as scipy.stats.norm.ppf, so the same tables."""
    from compressai.entropy_models import GaussianConditional as Compressai

    assert GaussianConditional._standardized_quantile(tail_mass / 2) == scipy.stats.norm.ppf(tail_mass / 2)
    ours, theirs = GaussianConditional(None, tail_mass=tail_mass), Compressai(None, tail_mass=tail_mass)
    for conditional in (ours, theirs):
        conditional.update_scale_table(get_scale_table(), force=True)
    for table in ("_quantized_cdf", "_cdf_length", "_offset"):
        assert torch.equal(getattr(ours, table), getattr(theirs, table)), table


def test_the_quantile_is_scipys_everywhere():
    quantiles = np.concatenate([np.logspace(-300, np.log10(0.5), 2000), [5e-10, 0.5]])
    ours = np.array([GaussianConditional._standardized_quantile(q) for q in quantiles])
    assert np.array_equal(ours, scipy.stats.norm.ppf(quantiles))


@pytest.mark.parametrize("folder", ["demo", "sd-pndm", "v-prediction"])
def test_the_ddim_schedule_is_what_from_pretrained_builds(folder, tmp_path):
    """DDIM's settings read from a folder's scheduler config equal DDIMScheduler.from_pretrained's
    (which imports every compatible scheduler to sort the keys), for the demo's DDIM config and for
    a Stable Diffusion-style PNDM config."""
    from diffusers import DDIMScheduler, PNDMScheduler

    if folder == "demo":
        root = DEMO_DIR
    else:
        root = tmp_path
        prediction = "v_prediction" if folder == "v-prediction" else "epsilon"
        settings = {key: value for key, value in SD_SCHEDULE.items() if key != "clip_sample"}  # not PNDM's
        PNDMScheduler(**{**settings, "prediction_type": prediction}, skip_prk_steps=True).save_pretrained(root / "scheduler")
    reference = DDIMScheduler.from_pretrained(root, subfolder="scheduler", clip_sample=False, set_alpha_to_one=False)
    scheduler = _ddim_scheduler(DDIMScheduler, DDIMScheduler.load_config(root, subfolder="scheduler"))
    settings = [key for key in inspect.signature(DDIMScheduler.__init__).parameters if key != "self"]
    assert {key: scheduler.config[key] for key in settings} == {key: reference.config[key] for key in settings}
    assert torch.equal(scheduler.alphas_cumprod, reference.alphas_cumprod)
    assert scheduler.config.prediction_type == ("v_prediction" if folder == "v-prediction" else "epsilon")


def test_diffusers_package_map_is_packages_distributions():
    """diffusers.utils, imported through prepare_diffusers, holds the deferred map: on lookup it is
    what importlib.metadata.packages_distributions() returns, and the stdlib function is restored."""
    run = _python(
        "import importlib.metadata, json\n"
        "original = importlib.metadata.packages_distributions\n"
        "from codec.core import lean_imports\n"
        "lean_imports.prepare_diffusers()\n"
        "from diffusers.utils import import_utils\n"
        "deferred = import_utils._package_map\n"
        "print(json.dumps([type(deferred).__name__, deferred._map is None,\n"
        "                  importlib.metadata.packages_distributions is original,\n"
        "                  dict(deferred) == original(), deferred.get('torch'), 'no_such_package' in deferred,\n"
        "                  import_utils._is_distribution_installed('PIL')[0]]))"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["DeferredPackageMap", True, True, True, ["torch"], False, True]
