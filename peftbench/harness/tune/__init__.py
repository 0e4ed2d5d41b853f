"""`peftbench tune`: settings chosen on a dev split, written into recipes."""
