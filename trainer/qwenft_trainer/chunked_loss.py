"""The causal-LM loss without the full logits tensor: cross-entropy over chunks of trained rows.

At Qwen's vocabulary (151,936 entries) the logits of a 2,048-token batch take 1.2 GB in fp32,
and the plain loss keeps them, their log-softmax and their gradient alive together: on a
small model that is most of the training memory. This module computes the same loss from
the final hidden states instead. Only rows whose next-token label is trained (assistant
tokens) are projected through the output head at all, a chunk of rows at a time; each
chunk's logits become that chunk's loss and its gradient with respect to the hidden states
(and to the head when the head trains) in the forward pass, and are freed before the next
chunk, so at most one chunk of logits exists at any moment and the backward pass only scales
the stored gradients (no second projection, the method Liger Kernel's fused linear
cross-entropy uses on CUDA). The sum over chunks is normalised exactly as transformers'
``ForCausalLMLoss`` does: by ``num_items_in_batch`` when the Trainer passes it (gradient
accumulation, tokens averaged across ranks), else by the batch's trained-token count.

:func:`install_chunked_loss` patches one model instance's ``forward`` (before PEFT wraps
it): with labels, it runs the model's own forward for its hidden states (no logits:
``logits_to_keep`` keeps no position) and adds the MoE router's load-balancing loss the way
the model's forward would; without labels (generation, the packing probe) it is the original
forward. A head that is not a plain linear layer (LoRA or ``modules_to_save`` on
``lm_head``, a ZeRO-3-partitioned weight) is called as a module per chunk under
``torch.utils.checkpoint``, so its own hooks and adapters run and the backward recomputes
each chunk's logits.

    install_chunked_loss(model)          # then get_peft_model(model, ...) and train
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
# fp32 logits held per chunk: ~64 MiB, 110 rows at Qwen's vocabulary of 151,936 (each chunk
# is one buffer, reused in place from logits to gradient).
CHUNK_BYTES = 64 * 2**20
MIN_CHUNK_ROWS = 16


def chunk_rows_for(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's fp32 logits stay within ``chunk_bytes``."""
    return max(MIN_CHUNK_ROWS, chunk_bytes // (4 * max(1, vocab_size)))


def _linear_cross_entropy_function() -> Any:
    """The autograd function, defined on first use so that importing this module needs no torch."""
    import torch
    import torch.nn.functional as F

    class LinearCrossEntropy(torch.autograd.Function):
        """sum(cross_entropy(hidden @ weight.T + bias, targets)) * scale; grads made in forward."""

        @staticmethod
        def forward(
            ctx: Any,
            hidden: torch.Tensor,  # [N, H], trained rows only
            weight: torch.Tensor,  # [V, H]
            bias: torch.Tensor | None,  # [V]
            targets: torch.Tensor,  # [N], no ignored entries
            scale: torch.Tensor,  # 1 / divisor, fp32 scalar
            chunk_rows: int,
            with_grad: bool,
        ) -> torch.Tensor:
            wants_hidden, wants_weight, wants_bias = (
                with_grad and n for n in ctx.needs_input_grad[:3]
            )
            grad_hidden = torch.empty_like(hidden) if wants_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_weight else None
            grad_bias = (
                torch.zeros_like(bias, dtype=torch.float32)
                if wants_bias and bias is not None
                else None
            )
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = hidden[start : start + chunk_rows]
                target = targets[start : start + chunk_rows]
                # the plain path's precision: logits in the model's dtype, the loss in fp32;
                # one chunk-sized buffer, every step after the projection in place
                logits = F.linear(rows, weight, bias).float()
                picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)
                peak = logits.amax(dim=-1, keepdim=True)
                exp = logits.sub_(peak).exp_()  # exp(logit - max), in place of the logits
                sum_exp = exp.sum(dim=-1, keepdim=True)
                log_z = peak.squeeze(1) + sum_exp.squeeze(1).log()
                total += (log_z - picked).sum()
                if grad_hidden is None and grad_weight is None and grad_bias is None:
                    continue
                # d loss / d logits = (softmax - onehot) * scale
                grad = exp.div_(sum_exp)
                grad[torch.arange(grad.shape[0], device=grad.device), target] -= 1.0
                grad = grad.mul_(scale).to(rows.dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_rows] = grad @ weight
                if grad_weight is not None:
                    grad_weight += (grad.t() @ rows).float()
                if grad_bias is not None:
                    grad_bias += grad.sum(0, dtype=torch.float32)
            ctx.grads = (
                grad_hidden,
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None or bias is None else grad_bias.to(bias.dtype),
            )
            return total * scale

        @staticmethod
        def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
            grads = tuple(None if g is None else g * grad_output.to(g.dtype) for g in ctx.grads)
            ctx.grads = None
            return (*grads, None, None, None, None)

    return LinearCrossEntropy


@functools.cache
def _function() -> Any:
    return _linear_cross_entropy_function()


def _fusable(head: Any) -> bool:
    """A plain ``nn.Linear`` whose full weight is here (not partitioned by ZeRO-3)."""
    import torch

    return type(head) is torch.nn.Linear and not hasattr(head.weight, "ds_numel")


def _module_chunk_loss(head: Any, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    logits = head(rows).float()
    return F.cross_entropy(logits, target, reduction="sum")


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token labels as ``ForCausalLMLoss`` shifts them (the last position predicts none)."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    head: Any,
    labels: torch.Tensor | None = None,
    *,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """``ForCausalLMLoss(head(hidden_states), labels)`` without holding more than a chunk of logits.

    ``hidden_states`` are the final (normed) hidden states ``[batch, seq, hidden]``; ``head``
    is the output embedding (``model.get_output_embeddings()``); ``labels`` are unshifted, or
    ``shift_labels`` already shifted. The result is divided by ``num_items_in_batch`` when
    given, else it is the mean over trained tokens (NaN when there are none, as there).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if shift_labels is None:
        if labels is None:
            raise ValueError("chunked_causal_lm_loss needs labels or shift_labels")
        shift_labels = shifted_labels(labels)
    weight = head.weight
    flat_labels = shift_labels.reshape(-1).to(hidden_states.device)
    trained = flat_labels != IGNORE_INDEX
    rows = hidden_states.reshape(-1, hidden_states.shape[-1])[trained]
    targets = flat_labels[trained]
    if num_items_in_batch is None:
        divisor = trained.sum().to(torch.float32)
    elif isinstance(num_items_in_batch, torch.Tensor):
        divisor = num_items_in_batch.to(device=rows.device, dtype=torch.float32)
    else:
        divisor = torch.tensor(float(num_items_in_batch), device=rows.device)
    size = chunk_rows or chunk_rows_for(int(weight.shape[0]))
    if _fusable(head):
        scale = 1.0 / divisor
        loss: torch.Tensor = _function().apply(
            rows, weight, head.bias, targets, scale, size, torch.is_grad_enabled()
        )
        return loss
    total = rows.sum() * 0.0  # keeps the graph when no row is trained
    for start in range(0, rows.shape[0], size):
        piece = checkpoint(
            _module_chunk_loss,
            head,
            rows[start : start + size],
            targets[start : start + size],
            use_reentrant=False,
        )
        total = total + piece
    return total.float() / divisor


def router_aux_coefficient(model: Any) -> float:
    """The MoE load-balancing coefficient the model's forward adds (0 for a dense model)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return float(getattr(text, "router_aux_loss_coef", 0.0) or 0.0)


def install_chunked_loss(model: Any, *, chunk_rows: int | None = None) -> None:
    """Make ``model(..., labels=...)`` compute its loss with :func:`chunked_causal_lm_loss`.

    Patch the bare transformers model, before PEFT wraps it. The returned outputs carry the
    loss (plus the router's load-balancing loss on MoE models, as their forward adds it), the
    router outputs and an empty ``logits`` tensor; hidden states only when asked for.
    """
    import torch

    original = model.forward
    coefficient = router_aux_coefficient(model)
    no_positions = torch.empty(0, dtype=torch.long)

    @functools.wraps(original)
    def forward(
        *args: Any,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Any:
        if labels is None and shift_labels is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, **kwargs)
        keep_hidden = bool(kwargs.pop("output_hidden_states", False))
        kwargs.pop("logits_to_keep", None)
        outputs = original(*args, output_hidden_states=True, logits_to_keep=no_positions, **kwargs)
        hidden = outputs.hidden_states[-1]
        loss = chunked_causal_lm_loss(
            hidden,
            model.get_output_embeddings(),
            labels,
            shift_labels=shift_labels,
            num_items_in_batch=num_items_in_batch,
            chunk_rows=chunk_rows,
        )
        aux = getattr(outputs, "aux_loss", None)
        if aux is not None and coefficient:
            loss = loss + coefficient * aux.to(loss.device)
        outputs["loss"] = loss
        if not keep_hidden:
            outputs["hidden_states"] = None
        return outputs

    model.forward = forward
    model._qwenft_chunked_loss = True
