"""Prototype of the next demo adapter (docs/demo-backbone-v2.md, section 4b), not part of the codec:
learned step multipliers per (channel, band) and a learned t on the analytic mode's transform
(channel KLT + 8x8 block DCT), against the analytic mode itself (multipliers 1, noise-matched t),
on the same backbone with the same rate model (per-band Laplacian scales; entropy estimated, not
coded). Both are functions of log lambda only (no image features yet).

    python scripts/prototype_band_steps.py --backbone demo --data runs/demo-v2/data2 --minutes 8

Trains for --minutes CPU minutes (one thread), then prints the mean PSNR of both on the six
validation photos at 0.03-0.3 bpp (interpolated in log bpp), the same with t = 0 (what each one's
t gains over no denoising: issue 13, item 3), and a few points of each curve.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec.core.backbone import load_backbone
from codec.core.adapters import transform
from codec.core.adapters.analytic import noise_matched_timestep
from codec.core.images import to_tensor, pad_to_multiple
from codec.data.photos import load_photos, split_photos
from codec.train.adapter import ddim_chain, latent_bank

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--backbone", default="demo")
ap.add_argument("--data", type=Path, required=True, help="photos (python -m codec.train data); validation held out")
ap.add_argument("--minutes", type=float, default=8.0, help="training, CPU minutes")
args = ap.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
MINUTES = args.minutes
bb = load_backbone(args.backbone, device="cpu")
T_MAX = 100
photos = load_photos(args.data)
train, val = split_photos(photos)
crops, latents = latent_bank(bb, train, 128, per_photo=12, seed=0)
print("bank", latents.shape, flush=True)
C = latents.shape[1]


def analyse(y):
    """centred, rotated, DCT coefficients of each latent (no grad), rotation, mean."""
    out = []
    for i in range(len(y)):
        yi = y[i:i + 1].double()
        mean = yi.mean(dim=(0, 2, 3), keepdim=True)
        R = transform.channel_rotation(yi)
        c = transform.block_dct(transform.rotate(yi - mean, R.T))
        out.append((c.float(), R, mean.float()))
    return out


def synth(c, R, mean):
    return transform.rotate(transform.block_dct(c.double(), inverse=True), R).float() + mean


def laplace_bits(v, scale):
    b = (scale / math.sqrt(2)).clamp(min=1e-4)
    cdf = lambda x: torch.where(x < 0, 0.5 * torch.exp(x.clamp(max=0) / b), 1 - 0.5 * torch.exp(-x.clamp(min=0) / b))
    p = (cdf(v + 0.5) - cdf(v - 0.5)).clamp(min=1e-9)
    return -torch.log2(p)


class Net(torch.nn.Module):
    def __init__(self, bands):
        super().__init__()
        self.s0 = torch.nn.Parameter(torch.tensor(1.0))      # log step at log lam = 0, in std units
        self.s1 = torch.nn.Parameter(torch.tensor(-1.0))     # softplus -> slope
        self.mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, C * bands + 1))
        torch.nn.init.zeros_(self.mlp[-1].weight); torch.nn.init.zeros_(self.mlp[-1].bias)
        self.bands = bands

    def forward(self, log_lam):
        out = self.mlp(log_lam[:, None])
        log_step = self.s0 - F.softplus(self.s1) * log_lam
        return log_step, out[:, :-1].view(-1, C, self.bands), T_MAX * torch.sigmoid(out[:, -1] - 1.0)


h, w = latents.shape[-2:]  # the training crops
NB = transform.band_count(h, w)
net = Net(NB)
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
LAM = (0.3, 1e5)


def rd(c, R, mean, x, log_step, log_m, t, std, noisy, ste=True, steps=4):
    """bits, mse for one latent; c (1,C,h,w)."""
    hh, ww = c.shape[-2:]
    bm = transform.band_map(hh, ww)
    step = (torch.exp(log_step) * std * torch.exp(log_m)[:, bm]).unsqueeze(0)
    v = c / step
    q = v + (torch.rand_like(v) - 0.5) if noisy else torch.round(v)
    sl = torch.arange(C).view(-1, 1, 1) * transform.band_count(hh, ww) + bm
    energy = torch.zeros(C * transform.band_count(hh, ww)).index_add(0, sl.reshape(-1), v.pow(2).reshape(-1))
    pop = torch.bincount(sl.reshape(-1), minlength=C * transform.band_count(hh, ww)).float()
    scale = (energy / pop + 1e-8).sqrt()[sl].unsqueeze(0)
    bits = laplace_bits(q, scale).sum()
    rq = v + (torch.round(v) - v).detach()
    y_hat = synth(step * rq, R, mean)
    if t is None:
        err = float(((step * torch.round(v) - c) ** 2).mean())
        t = torch.tensor([float(noise_matched_timestep(bb.alphas_cumprod, err, T_MAX))])
    if float(t.detach()) < 0.5:
        x0 = y_hat
    else:
        x0 = ddim_chain(bb, y_hat, t.view(1), steps)
    x_hat = bb.decode(x0)
    mse = ((x_hat - x) / 2).pow(2).mean()
    return bits, mse, float(t.detach())


start = time.process_time(); step_i = 0
while time.process_time() - start < MINUTES * 60:
    idx = torch.randint(0, len(crops), (8,))
    x, y = crops[idx], latents[idx]
    lam = torch.exp(math.log(LAM[0]) + (math.log(LAM[1]) - math.log(LAM[0])) * torch.rand(8))
    log_step, log_m, t = net(torch.log(lam))
    loss = 0
    an = analyse(y)
    for i in range(8):
        c, R, mean = an[i]
        std = float((y[i] - y[i].mean(dim=(1, 2), keepdim=True)).pow(2).mean().sqrt())
        bits, mse, _ = rd(c, R, mean, x[i:i + 1], log_step[i], log_m[i], t[i:i + 1], std, noisy=True)
        bpp = bits / (x.shape[-1] * x.shape[-2])
        loss = loss + torch.log(bpp + lam[i] * mse) / 8
    opt.zero_grad(); loss.backward(); opt.step(); step_i += 1
    if step_i % 50 == 0:
        print(f"step {step_i} {(time.process_time()-start)/60:.1f} min loss {loss.item():.3f} "
              f"t@lam {[round(float(v),1) for v in net(torch.log(torch.tensor([1.0, 100.0, 1e4])))[2]]}", flush=True)

# evaluation on validation photos at their own size: learned (per lambda) vs analytic (per step)
with torch.no_grad():
    rows = {}
    for name, arr in val.items():
        x = pad_to_multiple(to_tensor(Image.fromarray(arr)), 64)
        y = bb.encode(x)
        (c, R, mean), = analyse(y)
        std = float((y - y.mean(dim=(2, 3), keepdim=True)).pow(2).mean().sqrt())
        pix = arr.shape[0] * arr.shape[1]
        xs = x
        learned, analytic, learned_t0, analytic_t0 = [], [], [], []
        for ll in np.linspace(math.log(LAM[0]), math.log(LAM[1]), 14):
            log_step, log_m, t = net(torch.tensor([ll], dtype=torch.float32))
            for t_used, curve in ((t, learned), (torch.zeros(1), learned_t0)):
                bits, mse, tt = rd(c, R, mean, xs, log_step[0], log_m[0], t_used, std, noisy=False)
                curve.append((float(bits) / pix, -10 * math.log10(float(mse)), tt))
        for ls in np.linspace(math.log(0.02), math.log(8), 16):
            for t_used, curve in ((None, analytic), (torch.zeros(1), analytic_t0)):
                bits, mse, tt = rd(c, R, mean, xs, torch.tensor(ls), torch.zeros(C, NB), t_used, std, noisy=False)
                curve.append((float(bits) / pix, -10 * math.log10(float(mse)), tt))
        rows[name] = (learned, analytic, learned_t0, analytic_t0)

    def at(curve, bpp):
        curve = sorted(curve)
        b = np.log([p[0] for p in curve]); q = [p[1] for p in curve]
        return float(np.interp(math.log(bpp), b, q))
    for bpp in (0.03, 0.05, 0.1, 0.2, 0.3):
        L, A, L0, A0 = ([at(v[k], bpp) for v in rows.values()] for k in range(4))
        print(f"bpp {bpp}: learned {np.mean(L):.2f} dB, analytic {np.mean(A):.2f} dB, diff {np.mean(L)-np.mean(A):+.2f}; "
              f"at t = 0: learned steps {np.mean(L0):.2f}, analytic {np.mean(A0):.2f} (gain of t: learned "
              f"{np.mean(L)-np.mean(L0):+.2f}, noise-matched {np.mean(A)-np.mean(A0):+.2f})")
    for name, (l, a, _, _) in rows.items():
        print(name, "learned", [(round(b, 3), round(p, 1), round(t, 1)) for b, p, t in l[::3]])
        print(name, "analytic", [(round(b, 3), round(p, 1), round(t, 1)) for b, p, t in a[::3]])
