"""The embedded demo: its training data built from text in installed packages (data.py) and its evaluation
tasks (tasks.py). Import from the modules."""
