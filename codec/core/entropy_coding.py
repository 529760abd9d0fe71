"""compressai's entropy models, without compressai's datasets: the one place the codec imports compressai.

    from codec.core.entropy_coding import (CompressionModel, EntropyBottleneck, GaussianConditional, get_scale_table,
                                           pmf_to_quantized_cdf)

Why not `from compressai.entropy_models import ...` alone: any import from compressai first runs
compressai/__init__.py (1.2.8), which imports every subpackage -- datasets, zoo, the registries --
and through them torch_geometric, torchvision.transforms and scipy.stats, and torch_geometric
prints a torch FutureWarning on every CLI call. codec.core.lean_imports says why and how only the
modules named here are imported; a later `import compressai` still gives the whole of compressai,
with these very classes (GaussianConditional: a subclass of compressai's, below).
"""

from __future__ import annotations

from codec.core import lean_imports

lean_imports.prepare_compressai()

from compressai.entropy_models import EntropyBottleneck  # noqa: E402
from compressai.entropy_models import GaussianConditional as CompressaiGaussianConditional  # noqa: E402
from compressai.entropy_models.entropy_models import pmf_to_quantized_cdf  # noqa: E402
from compressai.models.base import CompressionModel, get_scale_table  # noqa: E402


class GaussianConditional(CompressaiGaussianConditional):
    """compressai's GaussianConditional, its tables' tail quantile computed by scipy.special.ndtri:
    the very function scipy.stats.norm.ppf (what compressai calls) evaluates, without importing
    scipy.stats (0.5 s of a CLI call, for one number per table). scipy.special itself (0.05 s) is
    imported when a Gaussian table is first built: never in analytic mode, whose tables are Laplacian."""

    @staticmethod
    def _standardized_quantile(quantile):
        import scipy.special

        return scipy.special.ndtri(quantile)


__all__ = ["CompressionModel", "EntropyBottleneck", "GaussianConditional", "get_scale_table", "pmf_to_quantized_cdf"]
