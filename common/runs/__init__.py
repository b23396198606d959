"""What a run leaves on disk and how it is found again: checkpoints written atomically and loaded (``checkpoint``), run
and split identity and the patients a checkpoint has seen (``identity``), the output folder's lock and stale
temporaries (``folder``), and where each numbered folder keeps its model (``layout``).
"""
