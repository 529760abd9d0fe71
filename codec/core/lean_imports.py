"""The parts of compressai, scipy and diffusers the codec uses, imported without the rest.

    from codec.core import lean_imports
    lean_imports.prepare_compressai()  # then: from compressai.entropy_models import ...
    lean_imports.prepare_diffusers()   # then: from diffusers.models.unets.unet_2d import UNet2DModel

Why: a `python -m codec encode` of one photo spent 4.3 of its 6.7 CPU seconds importing, and most
of that in code the codec never runs (benchmarks/cli_startup.py, `-X importtime`):
- compressai/__init__.py imports every subpackage -- datasets, zoo, the registries -- and through
  them torch_geometric (a hard dependency of compressai 1.2.8, imported at module level, which also
  prints a torch FutureWarning), torchvision.transforms and scipy (docs: stack-notes B2);
- compressai's entropy models `import scipy.stats` (0.45 s) for one call, `scipy.stats.norm.ppf`,
  made only when a Gaussian table is built;
- the __init__ of diffusers.models.autoencoders, .unets, .transformers and .hooks each import every
  model or hook of their kind (the transformers among them import the `transformers` library),
  and diffusers.quantizers imports `transformers` for a pipeline config class (1.1 s together);
- diffusers.utils.torch_utils imports torch._dynamo (1.0 s with sympy) for a decorator that only
  matters under torch.compile, which the codec never uses;
- diffusers.utils.import_utils calls importlib.metadata.packages_distributions() at import (0.25 s:
  it reads the file list of every installed distribution without a top_level.txt, ~30k paths here)
  for a map it consults only when a package it checks for is installed and it needs that package's
  distribution name (optimum, flashinfer, modelopt) or when a hub pipeline declares requirements.
None of these packages documents a lighter import path (diffusers' top-level and diffusers.models
are lazy, these subpackages are not). So, as a last resort:

`bare_package(name)` registers a package in sys.modules without running its __init__.py; its
submodules import as usual, and the first name looked up on it that it lacks runs the real __init__
into it. A later `from diffusers.models.autoencoders import AutoencoderKL` or `import compressai;
compressai.zoo` therefore still gets the whole package, with the very classes imported here
(tests/codec/test_cli_startup.py and test_codec_cli.py check both). For torch._dynamo, diffusers'
own fallback is used: while diffusers.utils imports, `import torch._dynamo` fails, so diffusers
makes `maybe_allow_in_graph` a no-op as it does where dynamo is missing; afterwards torch._dynamo
imports normally. diffusers' package map is the very result of packages_distributions(), computed
on its first lookup instead of at import (`DeferredPackageMap`). Each step is skipped when its
package is already imported (then there is nothing to save, and nothing is replaced).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import importlib.metadata
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

_lock = threading.Lock()  # the set-up below runs once, whichever thread imports first
_packages_distributions = importlib.metadata.packages_distributions  # the original, for DeferredPackageMap


def bare_package(name: str, names: dict[str, str] | None = None):
    """Package `name` in sys.modules with its __path__ (so submodules import) but without running
    its __init__.py; the first name looked up on it that it lacks runs the real __init__ into it.
    `names` maps names the package must have without that (other modules ask for them with
    `from package import name`) to the submodule that defines each."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)
    lock = threading.Lock()

    def complete(attribute: str):  # PEP 562: called only for names the module does not have
        with lock:
            if vars(package).get("__getattr__") is complete:
                del package.__getattr__  # first, so that the __init__'s own imports do not come back here
                spec.loader.exec_module(package)
        return getattr(package, attribute)

    package.__getattr__ = complete
    sys.modules[name] = package
    for attribute, module in (names or {}).items():
        setattr(package, attribute, getattr(importlib.import_module(module), attribute))
    return package


def prepare_compressai() -> None:
    """compressai's entropy models and CompressionModel importable without its datasets, zoo,
    registries, torch_geometric or scipy.stats."""
    with _lock:
        if "compressai" in sys.modules:  # imported already, in full or here
            return
        importlib.import_module("scipy")  # the parent of the bare scipy.stats (cheap)
        bare_package("scipy.stats")
        _run_init_without_subpackage_imports(bare_package("compressai"))
        importlib.import_module("compressai.ans")  # read as `from compressai import ans`: must be there already
        bare_package("compressai.models")  # compressai.models.base imports from the two packages
        bare_package("compressai.latent_codecs", {"LatentCodec": "compressai.latent_codecs.base"})


def _run_init_without_subpackage_imports(package) -> None:
    """compressai/__init__.py minus its `from compressai import (datasets, ..., zoo)`: what is left
    is the entropy-coder registry (get_entropy_coder, available_entropy_coders, which
    compressai.entropy_models reads from the package at run time) and __version__."""
    path = Path(package.__file__)
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body
                 if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == package.__name__)]
    exec(compile(tree, str(path), "exec"), vars(package))  # noqa: S102 - compressai's own installed code


def prepare_diffusers() -> None:
    """diffusers' model modules importable one by one, without the other models, `transformers`,
    torch._dynamo or the scan of every installed distribution's file list."""
    with _lock:
        if "diffusers.utils" in sys.modules:  # imported already, in full or here
            return
        without_dynamo = "torch._dynamo" not in sys.modules
        if without_dynamo:
            sys.modules["torch._dynamo"] = None  # makes `import torch._dynamo` raise ImportError
        importlib.metadata.packages_distributions = DeferredPackageMap
        try:
            importlib.import_module("diffusers.utils")
        finally:
            importlib.metadata.packages_distributions = _packages_distributions
            if without_dynamo:
                del sys.modules["torch._dynamo"]
        importlib.import_module("diffusers.models")  # lazy: the parent of the bare packages
        for name in ("autoencoders", "unets", "transformers"):
            bare_package(f"diffusers.models.{name}")
        bare_package("diffusers.hooks")
        bare_package("diffusers.quantizers", {"DiffusersAutoQuantizer": "diffusers.quantizers.auto",
                                              "DiffusersQuantizer": "diffusers.quantizers.base"})


class DeferredPackageMap(Mapping):
    """importlib.metadata.packages_distributions() (top-level import name -> distribution names),
    computed on the first lookup: what diffusers.utils.import_utils stores at import as
    `_package_map` while prepare_diffusers imports it."""

    def __init__(self):
        self._lock, self._map = threading.Lock(), None

    def _computed(self) -> dict:
        with self._lock:
            if self._map is None:
                self._map = _packages_distributions()
            return self._map

    def __getitem__(self, name):
        return self._computed()[name]

    def __iter__(self):
        return iter(self._computed())

    def __len__(self):
        return len(self._computed())
