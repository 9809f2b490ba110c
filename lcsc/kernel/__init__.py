"""The kernel: everything the stages share, and nothing of any stage. Networks and model families,
trails, scoring (the one path from weights to FID), variants, baselines, features, FID, the
search's optimizer and journal, config, files and tracking. Importing this package imports nothing."""
