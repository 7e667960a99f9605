"""The PyTorch reference GAN step, in the code shape of pytorch-generative-model-collections'
``GAN.py``, timed the way ``benchmarks/gan_step.py`` times jaxgen. Needs torch (never a
dependency of jaxgen): ``pip install torch==2.13.0`` gives a CPU build on Linux x86_64.

    python benchmarks/torch_gan.py --batch-size 64 --steps 100     # prints one JSON object
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.optim as optim


def initialize_weights(net, batchnorm_scale="ones"):
    """``utils.initialize_weights``: N(0, 0.02) weights, zero biases. BatchNorm scales keep
    torch's default, 1, or with ``batchnorm_scale="uniform"`` are drawn from U(0, 1), the
    default of PyTorch up to 0.4.1 (the version the reference's pictures were made with)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.data.normal_(0, 0.02)
            m.bias.data.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and batchnorm_scale == "uniform":
            m.weight.data.uniform_()


class generator(nn.Module):
    def __init__(self, input_dim=62, output_dim=1, input_size=28, batchnorm_scale="ones"):
        super().__init__()
        self.input_size = input_size
        self.fc = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 128 * (input_size // 4) * (input_size // 4)),
            nn.BatchNorm1d(128 * (input_size // 4) * (input_size // 4)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, output_dim, 4, 2, 1), nn.Tanh())
        initialize_weights(self, batchnorm_scale)

    def forward(self, input):
        x = self.fc(input)
        x = x.view(-1, 128, (self.input_size // 4), (self.input_size // 4))
        return self.deconv(x)


class discriminator(nn.Module):
    def __init__(self, input_dim=1, output_dim=1, input_size=28):
        super().__init__()
        self.input_size = input_size
        self.conv = nn.Sequential(
            nn.Conv2d(input_dim, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2))
        self.fc = nn.Sequential(
            nn.Linear(128 * (input_size // 4) * (input_size // 4), 1024), nn.BatchNorm1d(1024),
            nn.LeakyReLU(0.2), nn.Linear(1024, output_dim), nn.Sigmoid())
        initialize_weights(self)

    def forward(self, input):
        x = self.conv(input)
        x = x.view(-1, 128 * (self.input_size // 4) * (self.input_size // 4))
        return self.fc(x)


class ReferenceGAN:
    """The state and the per-batch body of ``GAN.train`` (one D step, then one G step)."""

    def __init__(self, batch_size=64, z_dim=62, device="cpu"):
        self.batch_size, self.z_dim, self.device = batch_size, z_dim, device
        self.G = generator().to(device)
        self.D = discriminator().to(device)
        self.G_optimizer = optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.D_optimizer = optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.BCE_loss = nn.BCELoss()
        self.y_real_ = torch.ones(batch_size, 1, device=device)
        self.y_fake_ = torch.zeros(batch_size, 1, device=device)
        self.train_hist = {"D_loss": [], "G_loss": []}

    def step(self, x_):
        z_ = torch.rand((self.batch_size, self.z_dim), device=self.device)
        self.D_optimizer.zero_grad()
        D_real = self.D(x_)
        D_real_loss = self.BCE_loss(D_real, self.y_real_)
        G_ = self.G(z_)
        D_fake = self.D(G_)
        D_fake_loss = self.BCE_loss(D_fake, self.y_fake_)
        D_loss = D_real_loss + D_fake_loss
        self.train_hist["D_loss"].append(D_loss.item())
        D_loss.backward()
        self.D_optimizer.step()

        self.G_optimizer.zero_grad()
        G_ = self.G(z_)
        D_fake = self.D(G_)
        G_loss = self.BCE_loss(D_fake, self.y_real_)
        self.train_hist["G_loss"].append(G_loss.item())
        G_loss.backward()
        self.G_optimizer.step()


def benchmark(batch_size: int, steps: int, warmup: int, log_every: int = 100) -> dict:
    """Steps/s over ``steps`` steps after ``warmup``; the time from start to the end of step
    ``log_every`` (the reference's first log line), if the run gets that far."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    start = time.perf_counter()
    gan = ReferenceGAN(batch_size, device=device)
    data = torch.rand(16, batch_size, 1, 28, 28, device=device) * 2 - 1
    first_log = None
    for i in range(1, warmup + steps + 1):
        if i == warmup + 1:
            sync()
            t0 = time.perf_counter()
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        gan.step(data[i % len(data)])
        if i == log_every:
            sync()
            first_log = time.perf_counter() - start
    sync()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"framework": f"torch {torch.__version__}", "device": device,
            "batch_size": batch_size, "steps_per_s": steps / seconds,
            "images_per_s": steps * batch_size / seconds, "compile_s": 0.0,
            "first_log_s": first_log, "peak_memory_bytes": peak,
            "page_faults_per_step": faults / steps,
            "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(benchmark(args.batch_size, args.steps, args.warmup, args.log_every)))


if __name__ == "__main__":
    main()
