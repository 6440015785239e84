"""``dataset.rotation``: the random rotation after crop and flip (the SFW authors' CIFAR-100 augmentation),
on the per-item DataLoader path and on the device path, and off by default."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from consparse.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from consparse.data.device_batches import EpochSampler, crop_and_flip, rotate
from consparse.errors import ParameterError

from .test_cifar_datamodule import official, write_fake_cifar  # noqa: F401 - the fixture is used by name


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 5, 9)])
def test_batched_rotation_matches_torchvisions_rotate(shape):
    generator = torch.Generator().manual_seed(0)
    angles = torch.tensor([-15.0, -7.3, 0.0, 0.5, 11.1, 15.0, 90.0, -120.0], dtype=torch.float64)
    images = torch.randint(1, 256, (len(angles), *shape), dtype=torch.uint8, generator=generator)
    ours = rotate(images, angles)
    assert ours.dtype == torch.uint8 and ours.shape == images.shape
    for i, angle in enumerate(angles.tolist()):
        expected = TF.rotate(images[i], angle, interpolation=v2.InterpolationMode.NEAREST)
        # Nearest-neighbour ties can round apart in the last float bit: at most one pixel in a hundred.
        differing = (ours[i] != expected).any(dim=0).float().mean().item()
        assert differing <= 0.01, (angle, differing)
    # A rotation really happened (the image changed), and none where the angle is 0.
    assert not torch.equal(ours[0], images[0])
    assert torch.equal(ours[2], images[2])


def test_angles_are_uniform_in_the_range_and_leave_the_other_draws_alone():
    plain = EpochSampler(20_000, seed=3, padding=4, flip=True).plan()
    rotated = EpochSampler(20_000, seed=3, padding=4, flip=True, rotation=15.0).plan()
    for name in ("indices", "top", "left", "flip"):
        assert torch.equal(getattr(plain, name), getattr(rotated, name)), name
    assert torch.equal(plain.angle, torch.zeros_like(plain.angle))
    angle = rotated.angle
    assert angle.abs().max() <= 15.0 and angle.min() < -14.5 and angle.max() > 14.5
    counts = torch.histc(angle.float(), bins=6, min=-15, max=15)
    assert (counts - counts.mean()).abs().max() < 0.1 * counts.mean()  # ~3,333 per bin, sd ~55


def test_dataloader_path_rotates_after_crop_and_flip(tmp_path, official):  # noqa: F811
    write_fake_cifar(tmp_path, CIFAR100DataModule, official)
    rotated = CIFAR100DataModule(root=tmp_path, download=False, batch_size=4, rotation=15, val_fraction=0.0)
    rotated.setup()
    steps = rotated.train_set.dataset.transform.transforms
    kinds = [type(step) for step in steps]
    assert kinds[:3] == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandomRotation]
    assert list(steps[2].degrees) == [-15.0, 15.0]
    default = CIFAR100DataModule(root=tmp_path, download=False, batch_size=4)
    default.setup()
    assert v2.RandomRotation not in [type(step) for step in default.train_set.dataset.transform.transforms]
    # A rotated training item differs from every crop-and-flip of the image (zero corners appear).
    torch.manual_seed(0)
    images, _ = next(iter(rotated.train_dataloader()))
    assert images.shape == (4, 3, 32, 32)
    # Random crops pad with zeros along whole rows / columns only; a rotation zero-fills the corners
    # diagonally, so some image has a zero (normalised: -mean/std) corner pixel but a nonzero edge pixel.
    black = torch.tensor([-m / s for m, s in zip(rotated.mean, rotated.std)]).view(3, 1, 1)
    rotated_corner = False
    for _ in range(10):
        images, _ = next(iter(rotated.train_dataloader()))
        for image in images:
            corner_black = torch.allclose(image[:, 0, 0], black[:, 0, 0], atol=1e-5)
            edge_kept = not torch.allclose(image[:, 0, 16], black[:, 0, 0], atol=1e-5) and not torch.allclose(
                image[:, 16, 0], black[:, 0, 0], atol=1e-5
            )
            rotated_corner |= corner_black and edge_kept
    assert rotated_corner


def test_device_path_applies_the_planned_rotation(tmp_path, official):  # noqa: F811
    write_fake_cifar(tmp_path, CIFAR10DataModule, official)
    datamodule = CIFAR10DataModule(
        root=tmp_path, download=False, batch_size=6, on_device=True, rotation=15, val_fraction=0.0
    )
    batches = datamodule.train_dataloader()
    assert batches.sampler.rotation == 15.0
    plan = batches.sampler.plan()
    x, _ = next(iter(batches))
    chosen = plan.indices[:6]
    expected = rotate(
        crop_and_flip(batches.images[chosen], plan.top[:6], plan.left[:6], plan.flip[:6], 4), plan.angle[:6]
    )
    normalised = (expected.float() / 255 - batches.mean) / batches.std
    assert torch.allclose(x, normalised, atol=1e-6)
    assert plan.angle[:6].abs().max() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rotation": -1}, "rotation"),
        ({"rotation": 200}, "rotation"),
        ({"rotation": 15, "augment": False}, "dataset.augment=true"),
    ],
)
def test_bad_rotation_is_a_config_error(tmp_path, options, message):
    with pytest.raises(ParameterError, match=message):
        CIFAR100DataModule(root=tmp_path, **options)
