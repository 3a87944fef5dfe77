"""Everything no conv or dense rule took: pooling, layout transforms, elementwise ops and padding
get fused parallel outer loops and a vectorized innermost axis (the spatial axes of a
reduction move inside it, so pooling over NCHW{b}c vectorizes over the channel block)."""
from __future__ import annotations

from .common import SafeRule, is_spatial, root_blocks, schedule_reduction, schedule_spatial, try_primitive


class Generic(SafeRule):
    """Every other function: inline cheap producers, then parallel + vectorized loops."""

    def schedule(self, sch, lanes) -> bool:
        blocks = root_blocks(sch)
        if not blocks:
            return False
        # inline spatial producers (padding, layout transforms, broadcasts) into consumers
        for block in blocks[:-1]:
            if is_spatial(sch, block):
                try_primitive(sch.compute_inline, block)
        for block in root_blocks(sch):
            if is_spatial(sch, block):
                schedule_spatial(sch, block, lanes)
            else:
                schedule_reduction(sch, block, lanes)
        return True
