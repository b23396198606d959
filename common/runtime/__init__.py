"""The bottom floor: where and how a process runs. Device policy (``device``: the device, AMP dtype, seeding, batch
placement), torchrun processes (``distributed``), the thread and loader-worker rule (``threads``) and progress bars
(``progress``). Imports nothing above it.
"""
