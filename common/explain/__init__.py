"""Explanations: Grad-CAM maps and their figures (``gradcam``), Wang et al.'s localisation protocol on NIH-format boxes
(``localization``), and both applied to a scored checkpoint (``report``).
"""
