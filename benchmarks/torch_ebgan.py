"""The reference's EBGAN, run in PyTorch: does pytorch-generative-model-collections' own
``EBGAN.py`` collapse on Fashion-MNIST as jaxgen's EBGAN does? A transcription of its networks
and of the body of ``EBGAN.train`` (the reference's ``pullaway_loss`` included), on the IDX
files of ``--data-dir`` in [-1, 1], batch 64, one reshuffle per 937 steps. Needs torch and numpy
only (torch is never a dependency of jaxgen).

    python benchmarks/torch_ebgan.py --data-dir /usr/share/datasets/fashion-mnist \\
        --steps 2000 --batchnorm-scale-init ones --out ebgan_torch_ones.json

Every 50 steps it prints D's and G's loss and the spread of G's batch (the mean over pixels of
the standard deviation over the 64 images of the G step: about 0.15 at initialisation, 0 when
every z gives the same image). ``--batchnorm-scale-init uniform`` draws every BatchNorm scale
from U(0, 1), as PyTorch did up to 0.4.1, when the reference's pictures were made (jaxgen's
flag of the same name).
"""

import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch_gan import generator, initialize_weights


class discriminator(nn.Module):
    """``EBGAN.py``'s autoencoder D: (64)4c2s-FC32-FC64*14*14_BR-(1)4dc2s; returns
    (reconstruction, code)."""

    def __init__(self, input_dim=1, output_dim=1, input_size=28, batchnorm_scale="ones"):
        super().__init__()
        self.input_size = input_size
        self.conv = nn.Sequential(nn.Conv2d(input_dim, 64, 4, 2, 1), nn.ReLU())
        self.code = nn.Sequential(nn.Linear(64 * (input_size // 2) * (input_size // 2), 32))
        self.fc = nn.Sequential(
            nn.Linear(32, 64 * (input_size // 2) * (input_size // 2)),
            nn.BatchNorm1d(64 * (input_size // 2) * (input_size // 2)), nn.ReLU())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(64, output_dim, 4, 2, 1))
        initialize_weights(self, batchnorm_scale)

    def forward(self, input):
        x = self.conv(input)
        x = x.view(x.size()[0], -1)
        code = self.code(x)
        x = self.fc(code)
        x = x.view(-1, 64, (self.input_size // 2), (self.input_size // 2))
        return self.deconv(x), code


def pullaway_loss(embeddings):
    """The reference's term, as it is (one L1 norm of the whole matrix; see docs/gan.md)."""
    norm = torch.norm(embeddings, 1)
    normalized_embeddings = embeddings / norm
    similarity = torch.matmul(normalized_embeddings, normalized_embeddings.transpose(1, 0)) ** 2
    batch_size = embeddings.size()[0]
    return (torch.sum(similarity) - batch_size) / (batch_size * (batch_size - 1))


def load_images(data_dir):
    path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1)


def run(data_dir, steps, batchnorm_scale, seed, margin=1.0, pt_loss_weight=0.1, batch_size=64):
    torch.manual_seed(seed)
    X = load_images(data_dir)
    G = generator(batchnorm_scale=batchnorm_scale)
    D = discriminator(batchnorm_scale=batchnorm_scale)
    G_optimizer = optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    D_optimizer = optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    MSE_loss = nn.MSELoss()
    steps_per_epoch = len(X) // batch_size
    G.train()
    D.train()
    log, start = [], time.time()
    for it in range(steps):
        if it % steps_per_epoch == 0:
            perm = torch.randperm(len(X))
        j = it % steps_per_epoch
        x_ = X[perm[j * batch_size:(j + 1) * batch_size]]
        z_ = torch.rand((batch_size, 62))

        D_optimizer.zero_grad()
        D_real, _ = D(x_)
        D_real_loss = MSE_loss(D_real, x_)
        G_ = G(z_)
        D_fake, _ = D(G_)
        D_fake_loss = MSE_loss(D_fake, G_.detach())
        D_loss = D_real_loss + torch.clamp(margin - D_fake_loss, min=0)
        D_loss.backward()
        D_optimizer.step()

        G_optimizer.zero_grad()
        G_ = G(z_)
        D_fake, D_fake_code = D(G_)
        D_fake_loss = MSE_loss(D_fake, G_.detach())
        G_loss = D_fake_loss + pt_loss_weight * pullaway_loss(D_fake_code.view(batch_size, -1))
        G_loss.backward()
        G_optimizer.step()

        if it % 50 == 0 or it == steps - 1:
            row = {"step": it, "D_loss": D_loss.item(), "G_loss": G_loss.item(),
                   "spread": G_.detach().std(0).mean().item()}
            log.append(row)
            print(f"{it:5d}  D_loss {row['D_loss']:.4f}  G_loss {row['G_loss']:.4f}  "
                  f"spread {row['spread']:.4f}  ({time.time() - start:.0f} s)", flush=True)
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
            "seed": seed, "batchnorm_scale": batchnorm_scale, "steps": steps, "log": log}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True,
                        help="a folder with train-images-idx3-ubyte.gz (Fashion-MNIST)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batchnorm-scale-init", choices=("ones", "uniform"), default="ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the log as JSON here")
    args = parser.parse_args()
    if args.out and os.path.exists(args.out):
        parser.error(f"{args.out} exists; pass another --out or remove it.")
    torch.set_num_threads(args.threads)
    result = run(args.data_dir, args.steps, args.batchnorm_scale_init, args.seed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
