"""The one training engine (``loop``: ``fit``, ``train_one_epoch``, optimiser and schedule), its losses (``losses``),
the distillation criterion with its teachers and teacher-logit cache (``distill``), and the per-epoch log
(``run_log``). Distillation is a criterion handed to ``fit``, not a second loop.
"""
