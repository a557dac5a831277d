"""Keep the MoE router's load-balancing loss in the loss the Trainer optimizes.

Qwen's MoE models add ``router_aux_loss_coef * load_balancing_loss`` to the language-model
loss only when ``output_router_logits`` is on, and their configs ship it off (an inference
setting). Fine-tuning without it lets the routing collapse onto a few experts, so every
run on a MoE model turns it on; the coefficient stays the checkpoint's own. Dense models
have no router and are left alone.

    coefficient = keep_router_aux_loss(model)   # None for a dense model
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def keep_router_aux_loss(model: Any) -> float | None:
    """Turn on the router's auxiliary loss; returns its coefficient, None without a router.

    Multimodal Qwen3.5 checkpoints keep the flag on their ``text_config``; both levels are
    set so either model class sees it.
    """
    configs = [model.config]
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None:
        configs.append(text_config)
    routed = [c for c in configs if hasattr(c, "router_aux_loss_coef")]
    if not routed:
        return None
    for config in routed:
        config.output_router_logits = True
    coefficient = float(routed[-1].router_aux_loss_coef)
    log.info("MoE router load-balancing loss on (router_aux_loss_coef=%g)", coefficient)
    return coefficient
