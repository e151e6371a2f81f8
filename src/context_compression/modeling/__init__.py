"""One folder per compression method; each folder is self-contained so it can ship as Hub remote code."""
