"""The evaluation core: tasks and their metrics (sts.py, bitext.py, retrieval.py, ranking.py), the
(rank x depth x dim) grid (grid.py, with shared_depths.py and spread.py), its results (result.py, budget.py), and
the sizes and file formats of evaluation sets (suite.py, datasets.py, readers.py).

It imports only the encoder it scores and the artifact's point types, never Lightning (tests/test_architecture.py).
Around it: the grid's files, plots and comparison (mlembed.reporting), the ``GridEvaluation`` callback
(mlembed.callbacks.grid), the control arm (mlembed.control), the mteb adapter (mlembed.integrations.mteb), the
demo's tasks (mlembed.demo.tasks) and the command (mlembed.cli.evaluate). Import from the modules.
"""
