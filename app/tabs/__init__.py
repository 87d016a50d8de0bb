"""The workbench's tabs: one module each, building its components and wiring thin callbacks."""
