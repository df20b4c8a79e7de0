"""The training history that measures read (``Context(history=...)``): one row per epoch, a mapping of
column name to number. The trainer writes these columns and the measures read them; both take the names
from here. A leaf module: it imports nothing of genbench.

    epoch          1, 2, ... (the row's epoch)
    step           minibatch steps taken so far
    train_loss     full training-set cross-entropy at the end of the epoch (eval mode)
    train_error    full training-set error rate
    test_loss      test-set cross-entropy, on the trainer's test schedule: genbench's default ("log") evaluates
                   every epoch up to the 15th, then 8 per doubling of the epoch count, and always the last
                   epoch; NaN (None once stored) at the epochs in between
    test_error     test-set error rate, on the same schedule
    op.<name>      per-epoch probes: the order parameters of measures.phases (op.alignment, op.grad_norm, ...)
"""
from __future__ import annotations

EPOCH = "epoch"
STEP = "step"
TRAIN_LOSS = "train_loss"
TRAIN_ERROR = "train_error"
TEST_LOSS = "test_loss"
TEST_ERROR = "test_error"
COLUMNS = (EPOCH, STEP, TRAIN_LOSS, TRAIN_ERROR, TEST_LOSS, TEST_ERROR)
ORDER_PARAMETER_PREFIX = "op."  # the columns of the order-parameter probe
