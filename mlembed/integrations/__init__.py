"""mlembed models inside other projects' tools: the mteb adapter (mteb.py). Import from the modules."""
