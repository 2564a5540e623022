"""Binary morphology and connected components as torch tensor ops.

All functions take boolean tensors of shape ``(Z, Y, X)`` on any device.

Dilation is done with separable one-voxel shifts (``logical_or`` of shifted
views) rather than ``max_pool3d``: on CPU, torch's 3-D max pooling is about
50x slower than shifting a bool tensor (0.5 s vs 10 ms for 9 M voxels on two
cores), and on CUDA both are memory-bound, so the shift form wins everywhere.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dilate", "erode", "opening", "closing", "label", "bounding_box", "keep_large", "fill_2d", "hull_2d", "shift",
           "slice_bincounts", "upsample"]


def _dilate1(mask: torch.Tensor, dim: int) -> torch.Tensor:
    n = mask.shape[dim]
    if n < 2:
        return mask
    out = mask.clone()
    out.narrow(dim, 1, n - 1).logical_or_(mask.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, n - 1).logical_or_(mask.narrow(dim, 1, n - 1))
    return out


def dilate(mask: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
    """Box dilation.

    Parameters
    ----------
    mask : torch.Tensor
        bool ``(Z, Y, X)``.
    radius : tuple of int
        Half-width of the box in voxels along ``(z, y, x)``; 0 leaves an axis alone.

    Returns
    -------
    torch.Tensor
        bool ``(Z, Y, X)``.
    """
    for dim, r in enumerate(radius):
        for _ in range(int(r)):
            mask = _dilate1(mask, dim)
    return mask


def erode(mask: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
    """Box erosion (the dual of :func:`dilate`; the volume border does not erode)."""
    return ~dilate(~mask, radius)


def opening(mask: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
    """Erosion then dilation: removes structures thinner than the box."""
    return dilate(erode(mask, radius), radius)


def closing(mask: torch.Tensor, radius: tuple[int, int, int]) -> torch.Tensor:
    """Dilation then erosion: fills gaps and bays narrower than the box."""
    return erode(dilate(mask, radius), radius)


def label(mask: torch.Tensor, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """6-connected components.

    Union-find in tensor form (Shiloach-Vishkin style): every foreground voxel
    starts as its own parent; each round hooks the parents across every
    neighbouring pair to the smaller one, then pointer-jumps to the roots. It
    converges in a few rounds (logarithmic in component size for typical
    shapes), so it is far cheaper than plain label propagation, which needs as
    many rounds as the longest path through a component.

    Parameters
    ----------
    mask : torch.Tensor
        bool ``(Z, Y, X)``.
    max_iter : int
        Safety cap on hooking rounds.

    Returns
    -------
    labels : torch.Tensor
        int64 ``(Z, Y, X)``: 0 background, ``1..n`` components (in order of
        their first voxel in C order).
    sizes : torch.Tensor
        int64 ``(n + 1,)`` voxel counts; ``sizes[0]`` is the background count.
    """
    shape = mask.shape
    device = mask.device
    if mask.dim() == 3 and mask.numel() > 0:
        # Work on the mask's bounding box: cropping keeps the C order of the
        # foreground voxels, so the components and their numbering are the same.
        box = bounding_box(mask)
        if box is None:
            return torch.zeros(shape, dtype=torch.int64, device=device), torch.tensor([mask.numel()], dtype=torch.int64, device=device)
        if any(b.stop - b.start < n for b, n in zip(box, shape)):
            sub, sub_sizes = _label_flat(mask[box].contiguous(), max_iter)
            out3 = torch.zeros(shape, dtype=torch.int64, device=device)
            out3[box] = sub
            sub_sizes[0] += mask.numel() - sub.numel()
            return out3, sub_sizes
    return _label_flat(mask, max_iter)


def bounding_box(mask: torch.Tensor, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The slices of a bool ``(Z, Y, X)`` mask's bounding box, widened by ``margin`` voxels (clipped to
    the volume); None when the mask is empty."""
    box = []
    for dim in range(3):
        other = tuple(d for d in range(3) if d != dim)
        hit = torch.nonzero(mask.any(dim=other[1]).any(dim=other[0])).squeeze(1)
        if hit.numel() == 0:
            return None
        box.append(slice(max(0, int(hit.min()) - margin), min(mask.shape[dim], int(hit.max()) + 1 + margin)))
    return box[0], box[1], box[2]


def keep_large(mask: torch.Tensor, min_voxels: float) -> torch.Tensor:
    """The 6-connected components of ``mask`` (bool ``(Z, Y, X)``) with at least ``min_voxels`` voxels."""
    lab, sizes = label(mask)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def _label_flat(mask: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = mask.shape
    device = mask.device
    flat = mask.reshape(-1)
    idx = torch.nonzero(flat).squeeze(1)
    m = idx.numel()
    out = torch.zeros(flat.numel(), dtype=torch.int64, device=device)
    if m == 0:
        return out.view(shape), torch.tensor([flat.numel()], dtype=torch.int64, device=device)
    compact = torch.full((flat.numel(),), -1, dtype=torch.int64, device=device)
    compact[idx] = torch.arange(m, device=device)
    c3 = compact.view(shape)
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []
    for dim in range(3):
        n = shape[dim]
        if n < 2:
            continue
        a = c3.narrow(dim, 0, n - 1)
        b = c3.narrow(dim, 1, n - 1)
        both = (a >= 0) & (b >= 0)
        us.append(a[both])
        vs.append(b[both])
    parent = torch.arange(m, device=device)
    if us:
        u = torch.cat(us)
        v = torch.cat(vs)
        for _ in range(max_iter):
            pu = parent[u]
            pv = parent[v]
            differ = pu != pv
            if not bool(differ.any()):
                break
            pu, pv = pu[differ], pv[differ]
            low = torch.minimum(pu, pv)
            # Hook the root of the larger id under the smaller one; amin keeps
            # parent[x] <= x, so no cycles can form.
            parent.scatter_reduce_(0, pu, low, reduce="amin")
            parent.scatter_reduce_(0, pv, low, reduce="amin")
            while True:
                jumped = parent[parent]
                if torch.equal(jumped, parent):
                    break
                parent = jumped
    roots, inverse = torch.unique(parent, return_inverse=True)
    out[idx] = inverse + 1
    sizes = torch.bincount(out, minlength=roots.numel() + 1)
    return out.view(shape), sizes


def shift(t: torch.Tensor, dim: int, d: int) -> torch.Tensor:
    """``out[i] = t[i - d]`` along ``dim`` (False, or zero, shifted in at the border)."""
    n = t.shape[dim]
    out = torch.zeros_like(t)
    if abs(d) >= n:
        return out
    if d > 0:
        out.narrow(dim, d, n - d).copy_(t.narrow(dim, 0, n - d))
    else:
        out.narrow(dim, 0, n + d).copy_(t.narrow(dim, -d, n + d))
    return out


def fill_2d(mask: torch.Tensor) -> torch.Tensor:
    """Fill, slice by slice, every pixel enclosed along both in-plane axes.

    A pixel is set when the mask has a pixel on each of its four sides
    (anterior, posterior, right, left) in its own row and column. This fills
    holes and dense lesions inside a lung without running a 2-D connected
    components pass, and it does not fill bays open toward the mediastinum.

    Parameters
    ----------
    mask : torch.Tensor
        bool ``(Z, Y, X)``.

    Returns
    -------
    torch.Tensor
        bool ``(Z, Y, X)``, a superset of ``mask``.
    """
    # "Some mask pixel at or before / at or after" along a line is "between the
    # line's first and last mask pixel": two reductions instead of cumulative scans.
    enclosed: torch.Tensor | None = None
    for dim in (1, 2):
        n = mask.shape[dim]
        shape = [1, 1, 1]
        shape[dim] = n
        idx = torch.arange(n, device=mask.device, dtype=torch.int32).view(shape)
        first = torch.where(mask, idx, n).amin(dim=dim, keepdim=True)
        last = torch.where(mask, idx, -1).amax(dim=dim, keepdim=True)
        between = (idx >= first) & (idx <= last)
        enclosed = between if enclosed is None else enclosed & between
    assert enclosed is not None
    return mask | enclosed


def hull_2d(mask: torch.Tensor, spacing_yx: tuple[float, float] = (1.0, 1.0), directions: int = 16) -> torch.Tensor:
    """Per-slice convex hull, as the intersection of ``2 * directions`` half-planes.

    For each of ``directions`` angles in ``[0, pi)`` the slice's pixels are
    projected on that direction (in mm, so anisotropic pixels are handled);
    a pixel is inside when its projection lies between the mask's minimum and
    maximum along every direction. With 16 directions the polygon is within
    about 2 % of the true hull's extent. Slices without mask stay empty.

    Parameters
    ----------
    mask : torch.Tensor
        bool ``(Z, Y, X)``.
    spacing_yx : tuple of float
        In-plane pixel size (mm) along ``(y, x)``.
    directions : int
        Number of projection directions.

    Returns
    -------
    torch.Tensor
        bool ``(Z, Y, X)``, a superset of ``mask``.
    """
    z, y, x = mask.shape
    dev = mask.device
    ys = torch.arange(y, device=dev, dtype=torch.float32)[:, None] * float(spacing_yx[0])
    xs = torch.arange(x, device=dev, dtype=torch.float32)[None, :] * float(spacing_yx[1])
    present = mask.flatten(1).any(dim=1)  # (Z,)
    inside = present[:, None, None].expand(z, y, x).clone()
    big = torch.tensor(float("inf"), device=dev)
    for k in range(int(directions)):
        a = math.pi * k / directions
        proj = ys * math.sin(a) + xs * math.cos(a)  # (Y, X)
        pm = torch.where(mask, proj, -big).flatten(1).amax(dim=1)  # (Z,)
        pn = torch.where(mask, proj, big).flatten(1).amin(dim=1)
        inside &= (proj[None] <= pm[:, None, None] + 1e-3) & (proj[None] >= pn[:, None, None] - 1e-3)
    return inside | mask


def slice_bincounts(codes: torch.Tensor, n: int) -> torch.Tensor:
    """Per slice, how many voxels of a small non-negative integer map ``(Z, Y, X)`` hold each value below ``n``: ``(Z, n)``.

    A bincount per slice on the map as it is (uint8): one over the whole volume needs int64 codes
    offset by slice, eight bytes a voxel and several times the time.
    """
    if codes.shape[0] == 0:
        return torch.zeros((0, n), dtype=torch.int64, device=codes.device)
    return torch.stack([torch.bincount(codes[z].reshape(-1), minlength=n)[:n] for z in range(codes.shape[0])])


def upsample(t: torch.Tensor, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling by integer factors, padded or cropped to ``shape``.

    Parameters
    ----------
    t : torch.Tensor
        ``(z, y, x)`` tensor of any dtype.
    factors : tuple of int
        Repeat count per axis.
    shape : tuple of int
        Target ``(Z, Y, X)``; the remainder left by cropping before a
        downsample is padded with zeros (it lies at the edge of the field of view).
    """
    fz, fy, fx = (int(f) for f in factors)
    if (fz, fy, fx) != (1, 1, 1):
        # A strided copy per axis, innermost first (faster than one six-dimensional copy, whose
        # innermost runs are a single voxel, or a repeat_interleave pass per axis).
        z, y, x = t.shape
        if fx > 1:
            t = t[..., None].expand(z, y, x, fx).reshape(z, y, x * fx)
        if fy > 1:
            t = t[:, :, None, :].expand(z, y, fy, t.shape[2]).reshape(z, y * fy, t.shape[2])
        if fz > 1:
            t = t[:, None].expand(z, fz, t.shape[1], t.shape[2]).reshape(z * fz, t.shape[1], t.shape[2])
    t = t[: shape[0], : shape[1], : shape[2]]
    if tuple(t.shape) != tuple(shape):
        out = torch.zeros(tuple(shape), dtype=t.dtype, device=t.device)
        out[: t.shape[0], : t.shape[1], : t.shape[2]] = t
        t = out
    return t
