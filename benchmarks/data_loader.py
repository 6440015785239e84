"""Images/s of the CIFAR training loaders alone, against what ResNet-18 consumes at the same batch.

On synthetic data of CIFAR's shape (uint8 3x32x32, 10 classes; CI cannot download CIFAR), in one run:

* cpu_loader: the DataLoader path (``TransformedTensorDataset`` with RandomCrop(32, padding=4) +
  RandomHorizontalFlip per item, ``num_workers`` processes, pinned memory on CUDA), each batch
  copied to the device;
* device_loader: ``DeviceBatches`` (images kept on the device, crop + flip + normalise in batches);
* model: ResNet-18 (CIFAR stem) forward + backward + SGD step on one fixed batch (bf16 autocast
  and channels_last on CUDA, fp32 on the CPU), i.e. what training consumes.

The ratios loader / model say whether the loader keeps up (the goal on a GPU: >= 5).

    python benchmarks/data_loader.py                      # CUDA when present, else a small CPU run
    python benchmarks/data_loader.py --device cpu --batch-size 64 --num-images 4096

``measure_loader(...)`` returns the same numbers as a dict, for the GPU check script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from consparse.data.cifar import CROP_PADDING, CIFAR10DataModule
from consparse.data.device_batches import DeviceBatches, EpochSampler, ImageTensors
from consparse.data.tensor_images import TransformedTensorDataset, image_transform
from consparse.models.resnet import resnet18


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(batches: Iterable, device: torch.device, max_batches: int | None) -> float:
    """Images/s of ``batches`` moved to ``device``, timed from the first batch (worker start-up excluded)."""
    iterator = iter(batches)
    x, _ = next(iterator)
    x.to(device, non_blocking=True)
    _synchronize(device)
    count, started = 0, time.perf_counter()
    for index, (x, y) in enumerate(iterator):
        if max_batches is not None and index >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        count += x.shape[0]
    _synchronize(device)
    return count / (time.perf_counter() - started)


def _model_images_per_second(batch_size: int, device: torch.device, steps: int) -> float:
    model = resnet18((3, 32, 32), 10, stem="cifar").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2 if on_cuda else 1):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def measure_loader(
    device: str | torch.device | None = None,
    batch_size: int = 512,
    num_images: int = 50_000,
    num_workers: int = 0,
    cpu_loader_batches: int | None = 40,
    model_steps: int = 10,
    seed: int = 0,
) -> dict[str, object]:
    """Images/s of the CPU loader, the on-device loader and ResNet-18 training, and their ratios.

    Args:
        device: where batches go and the model runs (default: CUDA when available, else the CPU).
        batch_size: the batch of all three.
        num_images: size of the synthetic CIFAR-shaped training set.
        num_workers: DataLoader processes of the CPU path.
        cpu_loader_batches: batches the CPU path is timed over (None: one epoch); the on-device
            path is timed over one epoch.
        model_steps: training steps the model is timed over.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = True
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (num_images,), generator=generator)
    mean, std = CIFAR10DataModule.mean, CIFAR10DataModule.std

    augmented = image_transform(mean, std, [v2.RandomCrop(32, padding=CROP_PADDING), v2.RandomHorizontalFlip()])
    cpu_loader = DataLoader(
        TransformedTensorDataset(images, labels, augmented),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda",
    )
    cpu_rate = _images_per_second(cpu_loader, device, cpu_loader_batches)

    sampler = EpochSampler(num_images, seed=seed, padding=CROP_PADDING, flip=True)
    device_loader = DeviceBatches(ImageTensors(images, labels, mean, std, CROP_PADDING, True), batch_size, device, sampler)
    device_rate = _images_per_second(device_loader, device, None)

    model_rate = _model_images_per_second(batch_size, device, model_steps)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch_size,
        "num_images": num_images,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "cpu_loader_images_per_s": cpu_rate,
        "device_loader_images_per_s": device_rate,
        "model_images_per_s": model_rate,
        "cpu_loader_to_model": cpu_rate / model_rate,
        "device_loader_to_model": device_rate / model_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 64 on the CPU")
    parser.add_argument("--num-images", type=int, default=None, help="default: 50000 on CUDA, 4096 on the CPU")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--model-steps", type=int, default=None, help="default: 20 on CUDA, 2 on the CPU")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    on_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    result = measure_loader(
        device=args.device,
        batch_size=args.batch_size or (512 if on_cuda else 64),
        num_images=args.num_images or (50_000 if on_cuda else 4096),
        num_workers=args.num_workers,
        model_steps=args.model_steps or (20 if on_cuda else 2),
    )
    print(
        f"{result['device']}, batch {result['batch_size']}, {result['num_images']} images, "
        f"{result['num_workers']} workers, {result['torch_threads']} torch threads"
    )
    for name in ("cpu_loader", "device_loader", "model"):
        print(f"  {name:<14} {result[f'{name}_images_per_s']:>12,.0f} images/s")
    print(f"  cpu_loader / model    {result['cpu_loader_to_model']:.2f}")
    print(f"  device_loader / model {result['device_loader_to_model']:.2f}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(result, stream, indent=2)


if __name__ == "__main__":
    main()
