"""Helpers referenced by the local lm-eval task YAMLs that ``slimgpt.eval.zeroshot`` generates at run time.

The YAMLs themselves are written per run (they hold absolute paths to the data files and to lm-eval's own
task folder, whose prompt fields they ``include``); only the functions they name live here.
"""
