"""Scoring a model: logits on a loader (``logits``), AUROC, F1, accuracy and the patient bootstrap (``metrics``), a
checkpoint's report (``scoring``), subgroups and calibration (``subgroups``), another model's predictions file
(``external``), the spread across seed runs (``seed_spread``) and the report figures (``plots``).
"""
