"""Cap one loss term's pull on a shared tensor relative to every other term's.

Adam keeps one second-moment estimate per parameter for the sum of all terms, so a term whose
gradient is several times the segmentation loss's also shrinks the segmentation loss's effective
step. :class:`GradientBalance` measures both gradients on the bottleneck features during the
normal backward pass (two tensor hooks, no extra pass) and scales the term on the next step so
that its gradient there is at most ``ratio`` times the rest's.
"""

from __future__ import annotations

import torch


class GradientBalance:
    """Factor for one loss term: ``min(1, ratio · ‖g_rest‖ / ‖g_term‖)`` on a shared tensor, from the previous step.

    Read the shared tensor for the term through :meth:`branch` and multiply the term by
    :attr:`factor`. ``ratio <= 0`` switches the balance off (the factor stays 1).
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.factor = 1.0
        self._term_grad: torch.Tensor | None = None

    def reset(self) -> None:
        """Start over (factor 1), e.g. at the start of a stage."""
        self.factor = 1.0
        self._term_grad = None

    def branch(self, shared: torch.Tensor) -> torch.Tensor:
        """A view of ``shared`` for the term; hooks record both gradients when backward runs."""
        if self.ratio <= 0 or not shared.requires_grad:
            return shared
        view = shared.view_as(shared)
        view.register_hook(self._keep_term)
        shared.register_hook(self._update)
        return view

    def _keep_term(self, grad: torch.Tensor) -> None:
        self._term_grad = grad.detach()

    def _update(self, grad: torch.Tensor) -> None:
        """``grad`` is the total on the shared tensor; the term's part was kept just before."""
        if self._term_grad is None:
            return
        rest = (grad.detach() - self._term_grad).float().norm()
        term = self._term_grad.float().norm() / self.factor
        self._term_grad = None
        if float(term) > 0:
            self.factor = min(1.0, self.ratio * float(rest) / float(term))
