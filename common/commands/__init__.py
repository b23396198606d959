"""The top floor: everything that reads flags. One module per command (``train``, ``evaluate``, ``distill``,
``compare``, ``predict``, ``para_test``, ``demo``, ``image_cache``, ``synthetic``), none importing another (the demo
drives the others), over the shared ``_cli`` (parser, ``run_main``, number types), ``_flags`` (flag groups) and
``_setup`` (the set-up of a training run). Nothing below imports this folder.
"""
