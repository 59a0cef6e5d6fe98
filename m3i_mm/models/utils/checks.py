"""Input checks that keep a ``torch.compile`` graph whole."""
from typing import Callable

import torch


def check_all(condition: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ``ValueError(message())`` unless every element of
    ``condition`` is true.

    In eager mode the condition is read on the host and the message may
    show the offending values. Under ``torch.compile`` a host read would
    break the graph, so the check becomes a device-side assertion
    (``torch._assert_async``) that fails with a generic message.

    Args:
        condition (Tensor): Boolean tensor, any shape.
        message (callable): Builds the error message (called only on
            failure, in eager mode).

    Raises:
        ValueError: In eager mode, when an element is false.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(condition.all(), 'm3i_mm input check failed '
                            '(run eagerly for the offending values)')
    elif not bool(condition.all()):
        raise ValueError(message())
