"""compressai's entropy models, without compressai's datasets: the one place the codec imports compressai.

    from codec.core.entropy_coding import CompressionModel, EntropyBottleneck, GaussianConditional, get_scale_table

Why not `from compressai.entropy_models import ...`: any import from compressai first runs
compressai/__init__.py (1.2.8), which imports every subpackage -- datasets, zoo, the registries --
and through them torch_geometric, torchvision.transforms and scipy. torch_geometric is a hard
dependency of compressai 1.2.8, imported at module level by compressai.registry.transforms and the
point-cloud transforms, so it cannot simply be left uninstalled (docs: stack-notes B2), and
compressai documents no lighter import path. That costs a CLI call 0.3-0.7 s of CPU on top of
what diffusers imports anyway (3.4 s with the shared imports), and torch_geometric prints a torch
FutureWarning (torch.jit.script is deprecated) on every call.

So, as a last resort, the three packages whose __init__ starts those imports -- compressai,
compressai.models and compressai.latent_codecs -- are registered in sys.modules without running
their __init__, and only the modules the codec needs are imported into them. compressai's own
__init__ code (its entropy-coder registry, which compressai.entropy_models reads from the package at
run time) runs, minus its one statement that imports every subpackage. Each bare package runs its
real __init__ the first time something asks it for a name it lacks, so a later `import compressai`
still gives the whole of compressai (`compressai.zoo`, `from compressai.models import ...`), with the
very classes imported here (tests/codec/test_codec_cli.py checks both).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import threading
from pathlib import Path


def _bare_package(name: str):
    """Package `name` in sys.modules with its __path__ (so submodules import) but without running
    its __init__.py; the first name looked up on it that it lacks runs the real __init__ into it."""
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
    return package


def _run_init_without_subpackage_imports(package) -> None:
    """compressai/__init__.py minus its `from compressai import (datasets, ..., zoo)`: what is left
    is the entropy-coder registry (get_entropy_coder, available_entropy_coders) and __version__."""
    path = Path(package.__file__)
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body
                 if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == package.__name__)]
    exec(compile(tree, str(path), "exec"), vars(package))  # noqa: S102 - compressai's own installed code


if "compressai" not in sys.modules:  # else compressai is already imported (in full, or here before)
    _run_init_without_subpackage_imports(_bare_package("compressai"))
    importlib.import_module("compressai.ans")  # read as `from compressai import ans`: must be there already
    _bare_package("compressai.models")
    latent_codecs = _bare_package("compressai.latent_codecs")
    latent_codecs.LatentCodec = importlib.import_module("compressai.latent_codecs.base").LatentCodec  # the one name
    # compressai.models.base imports from the package

from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402
from compressai.models.base import CompressionModel, get_scale_table  # noqa: E402

__all__ = ["CompressionModel", "EntropyBottleneck", "GaussianConditional", "get_scale_table"]
