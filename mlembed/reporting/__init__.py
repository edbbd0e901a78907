"""What a grid leaves behind: its files and plots (report.py, plots.py), the trained-vs-baseline-vs-control
comparison (comparison.py) and the scores sent to the run's loggers (publish.py). Import from the modules."""
