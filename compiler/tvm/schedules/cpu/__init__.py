"""Default CPU schedules: fast untuned code for every layer of a CNN, chosen from its shapes.

TVM 0.27's zero pipeline legalizes and fuses but schedules nothing on CPU, so every layer
would run as scalar, single-thread loops (50-70x slower than onnxruntime). The CPU pipeline
(``pipelines.cpu_pipeline``) runs ``layout.layout_passes`` (blocked layouts, edgecnn's
legalization, constant folding, fusion), then ``schedule_rules``, first match wins:

* ``winograd.WinogradConv`` / ``direct.BlockedConv``: a register tile of output columns x one
  block of output channels accumulated in registers, reductions over input-channel chunks,
  kernel taps and the channels of a block; bias, BatchNorm, activation and residual adds
  inlined into the store; outer loops fused and parallel when the layer has enough work.
* ``int8_dot.IntegerDotConv``: int8 convs on the target's dot-product instruction (x86
  ``vpdpbusd``, ARM ``sdot``), the same register tile with the instruction tensorized.
* ``direct.PlainConv``: a conv still in NCHW: output channels x a vector of output columns.
* ``dense.Gemv`` and dlight's CPU ``GEMV`` for dense layers, then ``generic.Generic`` for
  pooling, layout transforms, elementwise ops and padding.

Module map: ``common`` (shared helpers and the tiled schedule), ``direct``, ``depthwise``, ``int8_dot``,
``winograd``, ``dense``, ``generic`` (one kind of layer each: compute and rule),
``legalize`` (which compute a Relax op becomes), ``layout`` (the Relax passes).
"""
from __future__ import annotations

from tvm.s_tir import dlight

from .common import RULE_ANNOTATION, channel_block, rule_of
from .dense import Gemv
from .direct import BlockedConv, PlainConv
from .generic import Generic
from .int8_dot import IntegerDotConv, IntegerDotGemv
from .layout import layout_passes, padded_out_channels
from .winograd import WinogradConv, use_winograd


def schedule_rules(lanes: int | None = None) -> list:
    """The ordered CPU rules: conv rules, the dense rules, then the generic parallel/vector rule."""
    return [WinogradConv(lanes), IntegerDotConv(lanes), BlockedConv(lanes), PlainConv(lanes), Gemv(lanes), IntegerDotGemv(lanes), dlight.cpu.GEMV(),
            Generic(lanes)]


__all__ = ["RULE_ANNOTATION", "BlockedConv", "Gemv", "Generic", "IntegerDotConv", "IntegerDotGemv", "PlainConv", "WinogradConv", "channel_block",
           "layout_passes", "padded_out_channels", "rule_of", "schedule_rules", "use_winograd"]
