"""FID, KID and DISTS through their real code paths, with stand-in networks for the pretrained
ones (whose weights no test machine has): the patching, the batching, the feature statistics
and the libraries' formulas run for real and are checked against values computed by hand."""

import types

import numpy as np
import pytest
import scipy.linalg
import torch

from codec.evaluate import metrics


class StubInception:
    """Stands in for torch-fidelity's InceptionV3: 6 features per patch (per-channel mean and
    standard deviation), and a record of every batch it was given."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch: torch.Tensor):
        self.batches.append(batch)
        x = batch.double()
        return (torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1).float(),)

    @staticmethod
    def features(tiles) -> np.ndarray:
        x = np.stack(tiles).astype(np.float64)
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2), ddof=1)], 1).astype(np.float32)


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """A weights file where metrics looks (its content is never read: the builder is replaced)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / metrics.WEIGHT_FILES["fid"]).write_bytes(b"")
    net = StubInception()
    monkeypatch.setattr(metrics, "_inception", lambda path: net)
    assert metrics.available("fid") and metrics.available("kid")
    return net


def _images(n, seed=0, shape=(512, 768, 3)):
    rng = np.random.default_rng(seed)
    # Smooth random fields plus noise, values in 20..220: each 256 px patch gets its own statistics.
    out = []
    for _ in range(n):
        coarse = rng.uniform(20, 200, (shape[0] // 128 + 1, shape[1] // 128 + 1, 3))
        up = np.kron(coarse, np.ones((128, 128, 1)))[: shape[0], : shape[1]]
        out.append(np.clip(up + rng.uniform(0, 20, shape), 0, 255).astype(np.uint8))
    return out


def test_patches_are_hifics_grid_and_its_half_shift():
    """HiFiC (Mentzer et al. 2020) / MS-ILLM's FID/256: non-overlapping 256 px patches, then the
    grid shifted by 128 px both ways, when the image is at least 1.5 patches a side."""
    h, w = 512, 768
    rows, cols = np.indices((h, w))
    image = np.stack([rows % 256, cols % 256, (rows // 256) * 4 + cols // 256], -1).astype(np.uint8)
    tiles = metrics.patches(image)
    corners = [(0, 0), (0, 256), (0, 512), (256, 0), (256, 256), (256, 512), (128, 128), (128, 384)]
    assert len(tiles) == len(corners)
    for tile, (top, left) in zip(tiles, corners):
        assert np.array_equal(tile, image[top:top + 256, left:left + 256])
    assert len(metrics.patches(np.zeros((384, 384, 3), np.uint8))) == 2  # 1.5 patches: the shifted one fits
    assert len(metrics.patches(np.zeros((383, 600, 3), np.uint8))) == 2  # two across, no shifted row
    assert len(metrics.patches(np.zeros((256, 256, 3), np.uint8))) == 1


def test_fid_of_a_shifted_copy_is_the_squared_shift(stub):
    """Every pixel +10: the means move by 10 in three features, the covariance stays, so
    FID = |mu1 - mu2|^2 = 3 x 10^2 exactly."""
    originals = _images(2)
    shifted = [im + np.uint8(10) for im in originals]  # max 230: no wrap-around
    assert metrics.fid(originals, shifted) == pytest.approx(300.0, rel=1e-6)
    assert metrics.fid(originals, originals) == pytest.approx(0.0, abs=1e-6)
    # The patches went to the network as uint8 NCHW batches of at most 32 (8 per image here).
    batches = stub.batches[:2]
    assert [tuple(b.shape) for b in batches] == [(16, 3, 256, 256)] * 2 and batches[0].dtype == torch.uint8


def test_fid_and_kid_equal_the_formulas_by_hand(stub):
    originals = _images(5, seed=1)  # 40 patches: more than one batch of 32
    recon = [(100 + (im.astype(np.int16) - 100) // 2).astype(np.uint8) for im in originals]  # half the contrast
    f1 = StubInception.features([t for im in originals for t in metrics.patches(im)]).astype(np.float64)
    f2 = StubInception.features([t for im in recon for t in metrics.patches(im)]).astype(np.float64)

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    fid = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.fid(originals, recon) == pytest.approx(fid, rel=1e-5)
    assert [len(b) for b in stub.batches[:2]] == [32, 8]

    # KID: the unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3. With fewer than 1000
    # patches every subset is all of them, so the mean over subsets is this one value.
    m, d = len(f1), f1.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((f1, f1), (f2, f2), (f1, f2)))
    kid = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2
    assert metrics.kid(originals, recon) == pytest.approx(kid, rel=1e-4)


def test_set_metrics_need_two_patches(stub):
    small = [np.zeros((300, 300, 3), np.uint8)]
    with pytest.raises(ValueError, match="at least two 256 px patches"):
        metrics.fid(small, small)


def test_dists_runs_its_real_head_on_a_stand_in_vgg(tmp_path, monkeypatch):
    """DISTS_pytorch builds torchvision's VGG16 (528 MB of weights); a randomly initialised
    stack of VGG16's feature layers stands in, and the real alpha/beta of the package are loaded."""
    import DISTS_pytorch
    import torchvision
    from torchvision.models import vgg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / metrics.WEIGHT_FILES["dists"]).write_bytes(b"")
    torch.manual_seed(0)
    monkeypatch.setattr(torchvision.models, "vgg16", lambda **kw: types.SimpleNamespace(features=vgg.make_layers(vgg.cfgs["D"])))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    slight = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert metrics.dists(a, a) == pytest.approx(0.0, abs=1e-6)
    assert 0 < metrics.dists(a, slight) < metrics.dists(a, heavy)
    net = metrics._dists_net(metrics.weights_path("dists"))
    shipped = torch.load(f"{DISTS_pytorch.__path__[0]}/weights.pt", map_location="cpu")
    assert torch.equal(net.alpha, shipped["alpha"]) and torch.equal(net.beta, shipped["beta"])


def test_lpips_runs_its_real_heads_on_a_stand_in_alexnet(tmp_path, monkeypatch):
    """The linear heads ship inside the lpips package and are loaded; AlexNet's features are a
    random stand-in (the file-loading path itself: test_baselines_metrics, marked slow)."""
    import lpips as lpips_package
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / metrics.WEIGHT_FILES["lpips"]).write_bytes(b"")
    torch.manual_seed(0)
    monkeypatch.setattr(torchvision.models, "alexnet", lambda **kw: torchvision.models.AlexNet())
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    slight = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert metrics.lpips(a, a) == 0.0
    assert 0 < metrics.lpips(a, slight) < metrics.lpips(a, heavy)
    net = metrics._lpips_net(metrics.weights_path("lpips"))
    heads = torch.load(f"{lpips_package.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu")
    assert torch.equal(net.lin0.model[1].weight, heads["lin0.model.1.weight"])


def test_weight_files_are_the_ones_the_libraries_load():
    """`available` looks for the file names torchvision and torch-fidelity fetch (an upgrade that
    renames them would otherwise report LPIPS/DISTS/FID unavailable with the weights on disk)."""
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url.endswith("/" + metrics.WEIGHT_FILES["lpips"])
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + metrics.WEIGHT_FILES["dists"])
    assert URL_INCEPTION_V3.endswith("/" + metrics.WEIGHT_FILES["fid"]) and metrics.WEIGHT_FILES["kid"] == metrics.WEIGHT_FILES["fid"]
    assert {m.name for m in metrics.METRICS.values() if m.needs_weights} == set(metrics.WEIGHT_FILES)
