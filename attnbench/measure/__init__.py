"""The one measuring path: memory, FLOPs and time of one attention call (see ARCHITECTURE.md)."""

#: the measuring instruments' own definition version (attnbench.definition), bumped when a change
#: alters the figures every runner records: 2 takes the resident memory figure from a call without
#: the profiler, whose event buffers version 1 counted as memory outside torch
DEFINITION_VERSION = 2
