"""Evaluation of 3D-ML models: retrieval, STS and bitext tasks scored over the (rank x depth x dim) grid.

Entry points: ``evaluate_grid`` / ``run_grid`` (grid.py), ``GridEvaluation`` (callback.py, a Lightning callback),
``best_within_budget`` (budget.py), ``build_tasks`` and ``EvalCaps`` (suite.py) and ``MTEBEncoder``
(mteb_adapter.py); the command is ``mlembed evaluate`` (mlembed/cli/evaluate.py). Encoders that also offer ``embed_layers``
(shared_depths.py) get every depth of a rank from one pass. Import from the modules; this package imports
nothing heavy on its own.
"""
