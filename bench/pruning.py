"""Channel-level helpers shared by the pruning defenses (Fine-Pruning, CLP, ...).

* **Layer lookup** (:func:`resolve_layer`): a layer is named by its dotted module path inside the
  wrapped network (``"layer4"``, ``"head_conv"``, ``"layers.6"``; a leading ``"net."`` is
  accepted) or by ``"auto"``, the model's *last convolutional stage*: the outermost module whose
  output tensor *is* the output of ``forward_features`` (found by tracing one dummy forward). That
  is ``layer4`` for the ResNets (after its final ReLU), ``head_conv`` (1x1 conv + BN + ReLU6) for
  MobileNetV2, ``layer3`` for the small CNNs, and e.g. ``layer4`` / ``bn2`` for timm ResNets /
  EfficientNets. A name that does not exist raises :class:`LayerNotFoundError` with suggestions.
* **Activations** (:func:`layer_outputs`): a forward hook captures one layer's output over a split
  (eval mode, through ``engine.map_batches``); the forward is cut short right after the layer.
* **Persistent channel masks** (:func:`set_channel_mask`): a 0/1 mask stored as a buffer
  (``channel_mask``) on the masked module, applied to its output by a forward hook that is a
  module-level function reading the module's own buffer. The mask therefore survives fine-tuning
  (a masked channel's output is exactly 0, whatever its weights become), ``copy.deepcopy``,
  ``torch.save`` of the module and ``.to(device)``; module names stay unchanged.
* **Conv/BN pairing** (:func:`conv_bn_pairs`): which Conv2d feeds each BatchNorm2d, by data flow
  (the BN's input tensor is the conv's output tensor in a traced forward) or by registration order
  (the CLP paper's code); and :func:`channel_lipschitz` (CLP's UCLC with the BN scale folded in).
"""
from __future__ import annotations

import difflib
import math
import warnings

import torch
import torch.nn as nn

from bench import engine
from bench.data import Split
from bench.defense import DefenseConfigError


class LayerNotFoundError(DefenseConfigError):
    """A pruning defense was pointed at a layer the model does not have."""


def _net(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module of the wrapped network (what ``layer`` may name)."""
    return [n for n, _ in _net(model).named_modules() if n]


def _dummy_input(model: nn.Module, image_shape) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    return torch.rand((2, *tuple(image_shape)), generator=torch.Generator().manual_seed(0)).to(dev)


def _feature_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "feature_maps"):
        return model.feature_maps(x)
    net = _net(model)
    if hasattr(net, "forward_features"):
        return net.forward_features(x)
    raise LayerNotFoundError(f"model {type(model).__name__} has no forward_features; name the layer explicitly")


@torch.no_grad()
def last_stage_name(model: nn.Module, image_shape) -> str:
    """The outermost module whose output is the model's last feature maps (see module docstring)."""
    net = _net(model)
    final: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: final.__setitem__(name, out))
               for name, m in net.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        fmap = _feature_maps(model, _dummy_input(model, image_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    hits = [name for name, out in final.items() if out is fmap]
    if not hits or fmap.dim() != 4:
        raise LayerNotFoundError(
            f"cannot find the last convolutional stage of {getattr(model, 'arch', type(model).__name__)}: "
            f"no sub-module outputs its (B, C, H, W) feature maps; name the layer explicitly (one of "
            f"{', '.join(_top_level(model))})")
    return min(hits, key=lambda n: (n.count("."), n))


def _top_level(model: nn.Module) -> list[str]:
    return [n for n, _ in _net(model).named_children()]


def resolve_layer(model: nn.Module, name: str, image_shape=None) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for ``name`` (``"auto"`` = last conv stage, needs ``image_shape``)."""
    if name == "auto":
        if image_shape is None:
            raise ValueError("resolve_layer('auto') needs the image shape")
        name = last_stage_name(model, image_shape)
    key = name[4:] if name.startswith("net.") and hasattr(model, "net") else name
    try:
        return key, _net(model).get_submodule(key)
    except AttributeError:
        names = layer_names(model)
        close = difflib.get_close_matches(key, names, n=4)
        raise LayerNotFoundError(
            f"model {getattr(model, 'arch', '') or type(model).__name__} has no layer '{name}'"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" Top-level layers: {', '.join(_top_level(model))} (or 'auto' for the last conv stage)") from None


# -- activations ----------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def layer_outputs(model: nn.Module, module: nn.Module, data: Split, reduce=None,
                  batch_size: int | None = None) -> torch.Tensor:
    """The output of ``module`` for every image of ``data`` (eval mode, no augmentation), after an
    optional per-batch ``reduce`` (e.g. a mean over space); concatenated on the CPU."""
    box: list[torch.Tensor] = []

    def hook(mod, inp, out):
        box.append(out if reduce is None else reduce(out))
        raise _Stop

    def fn(x, y, idx):
        box.clear()
        try:
            model(x)
        except _Stop:
            pass
        return box[0].float()

    handle = module.register_forward_hook(hook)
    try:
        with engine.eval_mode(model):
            return engine.map_batches(fn, data, batch_size=batch_size)
    finally:
        handle.remove()


def mean_channel_activation(model: nn.Module, module: nn.Module, data: Split) -> torch.Tensor:
    """Mean over images and spatial positions of each output channel of ``module`` (C,)."""
    per_image = layer_outputs(model, module, data, reduce=lambda o: o.float().flatten(2).mean(2)
                              if o.dim() > 2 else o.float())
    return per_image.mean(0)


# -- persistent channel masks ---------------------------------------------------------------------
def _apply_mask(module: nn.Module, inp, out):
    mask = module.channel_mask
    return out * mask.to(out.dtype).view(1, -1, *([1] * (out.dim() - 2)))


def set_channel_mask(module: nn.Module, mask: torch.Tensor) -> nn.Module:
    """Multiply ``module``'s output channels by the 0/1 ``mask`` from now on (persistent)."""
    mask = mask.detach().float().flatten()
    dev = next((t.device for t in list(module.parameters()) + list(module.buffers())), mask.device)
    if hasattr(module, "channel_mask") and "channel_mask" in module._buffers:
        if module.channel_mask.numel() != mask.numel():
            raise ValueError(f"mask has {mask.numel()} channels, the existing one {module.channel_mask.numel()}")
        module.channel_mask.copy_(mask.to(module.channel_mask.device))
        return module
    module.register_buffer("channel_mask", mask.to(dev))
    module.register_forward_hook(_apply_mask)
    return module


def get_channel_mask(module: nn.Module) -> torch.Tensor | None:
    return module._buffers.get("channel_mask")


def mask_from_pruned(num_channels: int, pruned: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(num_channels)
    mask[pruned.long()] = 0
    return mask


# -- conv / BN pairing and channel Lipschitz bounds -----------------------------------------------
@torch.no_grad()
def conv_bn_pairs(model: nn.Module, image_shape=None, how: str = "dataflow") -> tuple[list, list]:
    """Pairs ``(conv_name, conv, bn_name, bn)`` and the names of BNs left unpaired.

    ``how="dataflow"``: a BN is paired with the Conv2d whose output tensor is the BN's input in a
    traced forward (needs ``image_shape``); a BN fed by anything else (a sum, an activation: the
    pre-activation ResNets) is left unpaired. ``how="order"``: the official CLP rule, the Conv2d
    registered just before the BN. Either way a pair whose channel counts differ is left unpaired
    with a warning.
    """
    net = _net(model)
    pairs, unpaired = [], []
    if how == "order":
        conv = conv_name = None
        for name, m in net.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                if conv is not None and conv.out_channels == m.num_features:
                    pairs.append((conv_name, conv, name, m))
                else:
                    unpaired.append(name)
            elif isinstance(m, nn.Conv2d):
                conv, conv_name = m, name
    elif how == "dataflow":
        if image_shape is None:
            raise ValueError("dataflow pairing needs the image shape")
        produced: dict[int, tuple[torch.Tensor, str, nn.Module]] = {}
        fed: dict[str, tuple[str, nn.Module] | None] = {}
        handles = []
        modules = dict(net.named_modules())
        for name, m in modules.items():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: produced.__setitem__(id(out), (out, name, mod))))
            elif isinstance(m, nn.BatchNorm2d):
                def pre(mod, inp, name=name):
                    hit = produced.get(id(inp[0]))
                    fed[name] = (hit[1], hit[2]) if hit is not None and hit[0] is inp[0] else None
                handles.append(m.register_forward_pre_hook(pre))
        was_training = model.training
        model.eval()
        try:
            model(_dummy_input(model, image_shape))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        for name, m in modules.items():
            if not isinstance(m, nn.BatchNorm2d):
                continue
            src = fed.get(name)
            if src is not None and src[1].out_channels == m.num_features:
                pairs.append((src[0], src[1], name, m))
            else:
                unpaired.append(name)
    else:
        raise ValueError(f"pairing must be 'dataflow' or 'order', got '{how}'")
    if unpaired:
        warnings.warn(f"{len(unpaired)} BatchNorm2d layer(s) not fed directly by a matching Conv2d "
                      f"were skipped: {', '.join(unpaired[:8])}{' ...' if len(unpaired) > 8 else ''}")
    return pairs, unpaired


@torch.no_grad()
def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC per output channel: the largest singular value of the channel's kernel as a
    (in_channels / groups, kh * kw) matrix times |gamma| / sqrt(running_var) (no eps, float32, as
    in the CLP paper's code)."""
    w = conv.weight.detach().float().cpu()
    scale = (bn.weight.detach().float().cpu() / bn.running_var.detach().float().cpu().sqrt()).abs()
    mats = w.reshape(w.shape[0], w.shape[1], -1) * scale.view(-1, 1, 1)
    return torch.linalg.matrix_norm(mats, ord=2)


def prune_step_count(num_channels: int, step: float) -> int:
    """Channels per pruning step: ceil(step * C), at least 1."""
    return max(1, math.ceil(step * num_channels))
